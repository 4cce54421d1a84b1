"""DCloudSpawner objects that talk to the test cluster as the hub's ServiceAccount."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner, clients
from traitlets.config import Config

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import close_hub_state
from dcloud_spawner.kube import DCloudSpawner
from tests.conftest import EXAMPLE_CATALOG


async def point_kubespawner_at(kubeconfig: str) -> None:
    """KubeSpawner caches its client configuration per process; aim it at ``kubeconfig``."""
    await KubeSpawner._stop_all_reflectors()
    await close_hub_state()  # the watch caches were made with the old client
    os.environ["KUBECONFIG"] = kubeconfig
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
    clients.load_config.cache_clear()
    clients._client_cache.clear()


def cluster_spawner(cluster, user: str, groups=(), catalog: Path = EXAMPLE_CATALOG, **config) -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(catalog)
    cfg.DCloudSpawner.namespace = cluster.namespace
    cfg.DCloudSpawner.start_timeout = 60
    cfg.DCloudSpawner.k8s_api_request_timeout = 10
    for key, value in config.items():
        setattr(cfg.DCloudSpawner, key, value)
    spawner = DCloudSpawner(user=OfflineUser(user, groups), hub=offline_hub(), config=cfg)
    spawner.api_token = "test-token"
    return spawner
