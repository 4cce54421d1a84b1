"""The pure core: catalog, request, validation, plan, quotas, quantities, availability.

Imports nothing of JupyterHub, KubeSpawner or Kubernetes clients (a test checks it), so
every rule can be tested, and reused, without a hub or a cluster.
"""
