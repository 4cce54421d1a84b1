"""The Kubernetes backend: ``DCloudSpawner`` (KubeSpawner subclass), its pod and its watches."""

from .spawner import DCloudSpawner

__all__ = ["DCloudSpawner"]
