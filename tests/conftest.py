"""Shared fixtures. Cluster fixtures come from tests.cluster.fixture (real control plane)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from dcloud_spawner.core.catalog import Catalog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"  # a link to DEMO_CATALOG, as admins see it

try:  # the cluster harness is optional for unit-only runs outside CI
    from tests.cluster.fixture import kube_cluster, kueue_cluster
except ImportError as exc:  # pragma: no cover - reported by the cluster tests themselves
    _cluster_import_error = exc

    @pytest.fixture(scope="session")
    def kube_cluster():
        message = f"cluster harness unavailable: {_cluster_import_error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    kueue_cluster = kube_cluster


@pytest.fixture(autouse=True)
def _fresh_hub_state():
    """Spawners built in tests claim quota and GPUs in the hub-wide state; each test starts afresh.

    Synchronous on purpose: browser tests run Playwright's own event loop."""
    from dcloud_spawner.hub.state import reset_hub_state

    yield
    reset_hub_state()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.from_path(EXAMPLE_CATALOG)


@pytest.fixture(scope="session")
def catalog_data() -> dict:
    return yaml.safe_load(EXAMPLE_CATALOG.read_text())


@pytest.fixture
def offline_kubeconfig(tmp_path, monkeypatch):
    """A kubeconfig pointing nowhere: KubeSpawner needs one to be constructed."""
    from dcloud_spawner import cli

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    cli._fake_kubeconfig_if_needed()
    yield os.environ["KUBECONFIG"]


@pytest.fixture(scope="module")
async def cluster(kube_cluster):
    """The test cluster, with KubeSpawner's clients aimed at it as the hub's ServiceAccount."""
    from tests.support.kube_spawners import point_kubespawner_at

    await point_kubespawner_at(kube_cluster.hub_kubeconfig)
    return kube_cluster


@pytest.fixture(scope="module")
def core(kube_cluster):
    """CoreV1Api as cluster admin, for looking at what the spawner created."""
    from kubernetes import client
    from kubernetes import config as sync_config

    api = sync_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig)
    yield client.CoreV1Api(api)
    api.close()
