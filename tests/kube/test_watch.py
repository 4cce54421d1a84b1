"""The hub-wide Node and Pod watches (``kube/watch.py``) against a stand-in API server.

What they must keep doing while holding only lean facts: list in pages and follow changes
(adds, changes, deletes, finished pods), resume a watch the server ended without listing
again, list again after ``410 Gone`` (catching up with what the gap hid), mark the numbers
stale while the API server fails and heal by themselves, and hand the event loop back during
a large list or burst.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from traitlets.config import Config

from dcloud_spawner.core.availability import GpuAvailability
from dcloud_spawner.kube.facts import compute
from dcloud_spawner.kube.watch import ClusterWatch
from tests.support.fake_kube_api import FakeKubeApi, serve

T4 = {"nvidia.com/gpu.product": "Tesla-T4"}
TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name: str, gpus: int = 4, ready: bool = True) -> dict:
    return {
        "metadata": {"name": name, "labels": {**T4, "kubernetes.io/hostname": name}},
        "spec": {"taints": [TAINT]},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "128Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "images": [{"names": [f"registry.example.org/big-{i}:1"], "sizeBytes": 10**9} for i in range(20)],
        },
    }


def pod(name: str, node_name: str | None, gpus: int, phase: str = "Running", namespace: str = "ns") -> dict:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": {"note": "x" * 500}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "main", "image": "img", "resources": {"limits": limits, "requests": {"cpu": "1"}}}],
        },
        "status": {"phase": phase},
    }


@pytest.fixture
async def api():
    fake = FakeKubeApi()
    runner, client = await serve(fake)
    watch = ClusterWatch(api_factory=lambda: client)
    fake.watch = watch
    yield fake
    await watch.stop()
    await fake.end_watches()
    await client.api_client.close()
    await runner.cleanup()


async def until(predicate, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


def t4(watch: ClusterWatch, catalog) -> GpuAvailability:
    return watch.availability(catalog)["t4"]


def truth(api: FakeKubeApi, catalog) -> GpuAvailability:
    return compute(catalog, api.objects["nodes"].values(), api.objects["pods"].values())["t4"]


async def test_lists_in_pages_then_follows_adds_changes_and_deletes(api, catalog):
    for i in range(5):
        await api.put("nodes", node(f"t4-{i}"))
    for i in range(7):
        await api.put("pods", pod(f"p{i}", f"t4-{i % 5}", 1 if i % 2 else 0))
    watch = api.watch
    assert await watch.ensure_started()
    assert watch.nodes.page_size == 250
    assert t4(watch, catalog) == truth(api, catalog) == GpuAvailability(17, 20, 4)
    requests_before = list(api.requests)
    for _ in range(20):
        watch.availability(catalog)
    assert api.requests == requests_before  # reading availability asks the API nothing

    await api.put("pods", pod("big", "t4-0", 3))
    await until(lambda: t4(watch, catalog) == GpuAvailability(14, 20, 4), what="a new pod")
    await api.put("pods", pod("big", "t4-0", 3, phase="Succeeded"))  # finished: the server says deleted
    await until(lambda: t4(watch, catalog) == GpuAvailability(17, 20, 4), what="a finished pod")
    assert "ns/big" not in watch.pods.resources
    await api.delete("pods", "ns/p1")
    await api.put("nodes", node("t4-4", ready=False))
    await until(lambda: t4(watch, catalog) == truth(api, catalog) == GpuAvailability(14, 16, 4), what="delete")
    assert set(watch.pods.resources) == {"ns/p0", "ns/p2", "ns/p3", "ns/p4", "ns/p5", "ns/p6"}
    assert watch.pods.resources["ns/p3"] == ("t4-3", (("nvidia.com/gpu", 1),))  # the lean facts, not the pod
    assert watch.stale_since is None and watch.pods.lists == 1


async def test_a_list_is_read_a_page_at_a_time(api, catalog):
    for i in range(3):
        await api.put("nodes", node(f"t4-{i}"))
    for i in range(25):
        await api.put("pods", pod(f"p{i:02d}", f"t4-{i % 3}", 0))
    config = Config()
    config.ClusterPodReflector.page_size = 10
    watch = ClusterWatch(api_factory=api.watch._api_factory, config=config)
    try:
        assert await watch.ensure_started()
        assert api.requests.count("pods") == 3  # 25 pods, 10 a page
        assert len(watch.pods.resources) == 25
        assert t4(watch, catalog) == GpuAvailability(12, 12, 4)
    finally:
        await watch.stop()


async def test_an_ended_watch_resumes_without_listing_again(api, catalog):
    api.watch_seconds = 0.2
    await api.put("nodes", node("t4-0"))
    watch = api.watch
    assert await watch.ensure_started()
    await asyncio.sleep(1.0)  # several watches ended by the server
    await api.put("pods", pod("late", "t4-0", 2))
    await until(lambda: t4(watch, catalog) == GpuAvailability(2, 4, 2), what="the late pod")
    assert api.requests.count("pods watch") >= 3
    assert api.requests.count("pods") == 1 and watch.pods.lists == 1


async def test_410_gone_lists_again_and_catches_up_with_the_gap(api, catalog):
    await api.put("nodes", node("t4-0"))
    await api.put("nodes", node("t4-1"))
    await api.put("pods", pod("a", "t4-0", 2))
    await api.put("pods", pod("b", "t4-1", 1))
    watch = api.watch
    assert await watch.ensure_started()
    assert t4(watch, catalog) == GpuAvailability(5, 8, 3)
    # changes the watch never sees (the versions between were compacted away)
    await api.delete("pods", "ns/a", unseen=True)
    await api.put("pods", pod("c", "t4-1", 3), unseen=True)
    await api.end_watches()  # each resumes from before the gap: 410 Gone
    await until(lambda: t4(watch, catalog) == truth(api, catalog), what="the re-list")
    assert t4(watch, catalog) == GpuAvailability(4, 8, 4)
    assert watch.pods.lists == 2 and watch.nodes.lists == 2 and "ns/a" not in watch.pods.resources
    assert watch.stale_since is None  # a routine re-list is not an outage


async def test_an_outage_marks_the_numbers_stale_and_heals(api, catalog):
    await api.put("nodes", node("t4-0"))
    await api.put("pods", pod("a", "t4-0", 1))
    watch = api.watch
    assert await watch.ensure_started()
    before = time.time()
    await api.outage(True)
    await until(lambda: watch.stale_since is not None, what="stale")
    assert before <= watch.stale_since <= time.time()
    assert t4(watch, catalog) == GpuAvailability(3, 4, 3)  # the last known numbers stay
    await api.put("pods", pod("b", "t4-0", 2), unseen=True)  # happens while nobody can watch
    await api.outage(False)
    await until(lambda: watch.stale_since is None, timeout=15, what="healed")
    assert t4(watch, catalog) == GpuAvailability(1, 4, 1)


async def test_an_api_server_failing_at_start_hides_availability_without_failing(api, catalog):
    api.up = False
    watch = api.watch
    assert await watch.ensure_started() is False
    assert "watching Nodes and Pods failed" in watch.unavailable
    assert watch.availability(catalog) is None


async def test_a_burst_and_a_list_are_folded_in_slices_that_let_the_loop_run(api, catalog):
    """With a zero time slice the loop gets a turn after every event or listed pod: another task
    sees the copy grow one pod at a time (without slicing, a whole network read at once)."""
    config = Config()
    config.LeanReflector.slice_seconds = 0.0
    config.LeanReflector.page_size = 100
    watch = ClusterWatch(api_factory=api.watch._api_factory, config=config)
    await api.put("nodes", node("t4-0", gpus=8))
    seen: list[int] = []

    async def ticker():
        while True:
            seen.append(len(watch.live.pods))
            await asyncio.sleep(0)

    def steps() -> int:
        return max(b - a for a, b in itertools.pairwise(seen))

    for i in range(300):
        await api.put("pods", pod(f"listed-{i}", "t4-0", 0))
    task = asyncio.create_task(ticker())
    try:
        assert await watch.ensure_started()
        assert len(watch.live.pods) == 300
        assert watch.pods.lists == 1 and steps() == 0  # a list builds beside the copy, swapped in whole
        seen.clear()
        for i in range(2000):  # logged without waking the watch, then sent in one go
            api.rv += 1
            obj = pod(f"burst-{i}", "t4-0", 0)
            obj["metadata"]["resourceVersion"] = str(api.rv)
            api.objects["pods"][f"ns/burst-{i}"] = obj
            api.changes["pods"].append((api.rv, "ADDED", obj))
        await api.put("pods", pod("last", "t4-0", 8))
        await until(lambda: t4(watch, catalog) == GpuAvailability(0, 8, 0), what="the burst")
    finally:
        task.cancel()
        await watch.stop()
    assert len(seen) > 2000 and steps() == 1, steps()


async def test_an_admins_watch_settings_reach_the_hub_wide_watches(offline_kubeconfig):
    """c.ClusterPodReflector.* in jupyterhub_config.py reaches the watches the spawner's hub state makes."""
    from dcloud_spawner.core.availability import LiveAvailability
    from dcloud_spawner.hub.offline import OfflineUser, offline_hub
    from dcloud_spawner.kube import DCloudSpawner
    from dcloud_spawner.kube.watch import ClusterPodReflector, NodeReflector
    from tests.conftest import EXAMPLE_CATALOG

    config = Config()
    config.DCloudSpawner.catalog_path = str(EXAMPLE_CATALOG)
    config.ClusterPodReflector.page_size = 123
    config.NodeReflector.page_size = 45
    spawner = DCloudSpawner(user=OfflineUser("admin-settings", ()), hub=offline_hub(), config=config)
    watch = spawner.live_data()
    assert ClusterPodReflector(LiveAvailability(), None, config=watch.config).page_size == 123
    assert NodeReflector(LiveAvailability(), None, config=watch.config).page_size == 45


async def test_the_hubs_garbage_collector_is_left_alone_unless_the_operator_opts_in(api, monkeypatch):
    """By default the watches neither pause nor freeze the hub's collector (a plugin leaves its
    host's runtime alone); with c.LeanReflector.tune_garbage_collection, pages and events are
    parsed with collection paused and the hub's long-lived objects are frozen once, after the
    first lists."""
    import gc

    from dcloud_spawner.kube import watch as watch_module

    await api.put("nodes", node("t4-0"))
    await api.put("pods", pod("before", "t4-0", 1))
    gc.unfreeze()
    monkeypatch.setattr(watch_module, "_frozen", False)
    disables, freezes = [], []
    disable, freeze = gc.disable, gc.freeze
    monkeypatch.setattr(gc, "disable", lambda: (disables.append(1), disable()))
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(1), freeze()))

    left_alone = ClusterWatch(api_factory=api.watch._api_factory)
    try:
        assert await left_alone.ensure_started()
        await api.put("pods", pod("event", "t4-0", 1))
        await until(lambda: "ns/event" in left_alone.pods.resources, what="an event, collector untouched")
        assert not left_alone.pods.tune_garbage_collection and not left_alone.nodes.tune_garbage_collection
        assert disables == [] and freezes == [] and gc.get_freeze_count() == 0 and gc.isenabled()
    finally:
        await left_alone.stop()

    config = Config()
    config.LeanReflector.tune_garbage_collection = True  # both watches read it
    tuned = ClusterWatch(api_factory=api.watch._api_factory, config=config)
    try:
        assert await tuned.ensure_started()
        assert len(disables) >= 4  # each watch: a page and the swap
        assert gc.get_freeze_count() > 10_000 and freezes == [1]  # the modules, classes and functions
        listed = len(disables)
        await api.put("pods", pod("after", "t4-0", 1))
        await until(lambda: "ns/after" in tuned.pods.resources, what="an event, collector paused")
        assert len(disables) > listed and gc.isenabled()
        tuned.pods.relist()
        await api.put("pods", pod("relisted", "t4-0", 1))
        await until(lambda: "ns/relisted" in tuned.pods.resources, what="the pod after the freeze")
        assert tuned.pods.lists == 2 and freezes == [1]  # once per process, not at every list
    finally:
        await tuned.stop()
        gc.unfreeze()
