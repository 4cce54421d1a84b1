"""A local Kubernetes control plane for the integration tests.

Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from Go modules by
``build.sh``, plus KWOK simulating GPU nodes. ``python -m tests.cluster up|down|status`` drives it
by hand; ``tests.cluster.fixture.kube_cluster`` drives it from pytest.
"""
