"""DCloud's pods in real containers on node real-0: failures said in words, nothing left behind.

The happy path, driven from a browser, is tests/browser/test_real_pod.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from jupyterhub.spawner import SpawnException

from dcloud_spawner.hub.state import hub_state
from tests.support.kube_spawners import cluster_spawner
from tests.support.real_node import package_index, require_real_node, spawner_config, write_catalog

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def real_catalog(kube_cluster, tmp_path_factory):
    real = require_real_node(kube_cluster)
    folder = tmp_path_factory.mktemp("real-pods")
    with package_index(real, folder / "index") as url:
        yield write_catalog(folder / "catalog.yaml", url)


def pods_of(core, namespace, user):
    return core.list_namespaced_pod(namespace, label_selector=f"hub.jupyter.org/username={user}").items


async def test_a_package_that_does_not_exist_ends_the_spawn_with_its_name(cluster, core, real_catalog):
    spawner = cluster_spawner(cluster, "pkgfail", ["students"], **spawner_config(real_catalog))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "cpu": 1, "memory": "1Gi",
                                                      "packages": ["nosuch-dcloud-package>=1"]})
    began = time.monotonic()
    with pytest.raises(SpawnException) as failure:
        await spawner.start()
    assert failure.value.jupyterhub_message.startswith(
        "Extra package 'nosuch-dcloud-package>=1' could not be installed: the package index http://")
    assert time.monotonic() - began < 60  # told as soon as pip gives up, not at the start timeout
    deadline = time.monotonic() + 30
    while pods_of(core, cluster.namespace, "pkgfail"):
        assert time.monotonic() < deadline, "the failed pod was left behind"
        await asyncio.sleep(0.5)
    assert hub_state().ledger.claims == []  # its resources are free again


async def test_an_oom_killed_server_is_told_on_the_next_form(cluster, core, real_catalog):
    # The server's own process (not a kernel) goes over its 1Gi: the kernel kills the container.
    hog = ["python", "-c", "import time; time.sleep(2); block = b'x' * (3 << 30); time.sleep(60)"]
    spawner = cluster_spawner(cluster, "hog", ["students"], cmd=hog, **spawner_config(real_catalog))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "cpu": 1, "memory": "1Gi"})
    await spawner.start()
    deadline = time.monotonic() + 90
    while (status := await spawner.poll()) is None:
        assert time.monotonic() < deadline, "the server was not killed for memory"
        await asyncio.sleep(0.5)
    assert status == 137
    html = await spawner.get_options_form()
    assert ("Your last server was stopped because it ran out of memory: it used more than its limit of 1Gi, "
            "so the kernel killed it.") in html
    deadline = time.monotonic() + 30
    while pods_of(core, cluster.namespace, "hog"):
        assert time.monotonic() < deadline, "the dead server's pod was left behind"
        await asyncio.sleep(0.5)
