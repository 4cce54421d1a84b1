"""Building DCloudSpawner objects for unit tests, without JupyterHub or a cluster."""

from __future__ import annotations

from traitlets.config import Config

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.kube import DCloudSpawner
from tests.conftest import EXAMPLE_CATALOG


def make_spawner(groups=(), name="alice", **config) -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(EXAMPLE_CATALOG)
    cfg.DCloudSpawner.show_availability = False  # no cluster here to watch
    for key, value in config.items():
        setattr(cfg.DCloudSpawner, key, value)
    return DCloudSpawner(user=OfflineUser(name, groups), hub=offline_hub(), config=cfg)


async def pod_for(options, groups=(), **config) -> dict:
    """The pod manifest (as Kubernetes receives it) for ``options``."""
    from kubernetes_asyncio.client import ApiClient

    spawner = make_spawner(groups, **config)
    spawner.dcloud_plan = spawner.validate_options(options)
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as client:
        return client.sanitize_for_serialization(pod)
