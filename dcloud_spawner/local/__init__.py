"""The local backend: ``DCloudLocalSpawner``, this machine's GPUs, limits and dataset views."""

from .spawner import DCloudLocalSpawner

__all__ = ["DCloudLocalSpawner"]
