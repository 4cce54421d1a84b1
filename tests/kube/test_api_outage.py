"""An API server that stops for 30 s: the hub keeps working in words, and heals by itself.

The form still renders, with the free GPUs marked as of the outage (stale, not wrong); a
spawn fails with one sentence; once the API server is back the watches resume and the
numbers are right again, without a hub restart.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from jupyterhub.spawner import SpawnException

from dcloud_spawner.core.refusals import UNREACHABLE
from dcloud_spawner.hub.state import hub_state
from tests.cluster.control_plane import api_server_stopped
from tests.cluster.layout import RunDir, default_run_dir
from tests.kube.test_fair_share_cluster import FLEET, live
from tests.support.kube_spawners import cluster_spawner

pytestmark = pytest.mark.cluster

OUTAGE_SECONDS = 30
STALE = "The cluster has not answered since"


async def form(spawner) -> str:
    return await spawner.get_options_form()


async def test_an_api_server_outage_is_told_and_healed(cluster):
    if os.environ.get("DCLOUD_TEST_KUBECONFIG"):
        pytest.skip("stops the API server: only on the harness's own cluster")
    spawner = cluster_spawner(cluster, "outage", ["researchers"])
    assert await live(spawner, FLEET) == FLEET
    assert STALE not in await form(spawner)

    with api_server_stopped(RunDir(default_run_dir())):
        began = time.monotonic()
        while STALE not in (html := await form(spawner)):
            assert time.monotonic() - began < 20, "the form never said its numbers are stale"
            await asyncio.sleep(0.5)
        assert "NVIDIA A100 80GB · 16 of 16 free (as of" in html  # the last known numbers, marked

        starter = cluster_spawner(cluster, "outage-start", ["researchers"], k8s_api_request_retry_timeout=10)
        await starter.dcloud_apply_user_options(starter, {"environment": "scipy", "cpu": 1, "memory": "1Gi"})
        with pytest.raises(SpawnException) as failed:
            await asyncio.wait_for(starter.start(), 60)
        assert failed.value.jupyterhub_message == UNREACHABLE
        assert hub_state().ledger.claims == []  # nothing held by the failed start
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))

    healed = time.monotonic()
    while STALE in (html := await form(spawner)):
        assert time.monotonic() - healed < 90, "the watches did not resume after the API server came back"
        await asyncio.sleep(1)
    assert "NVIDIA A100 80GB · 16 of 16 free" in html and "(as of" not in html
    assert await live(spawner, FLEET) == FLEET
