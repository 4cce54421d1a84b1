"""A start returns when the pod watch shows the pod running, not at KubeSpawner's next look
(``kube/pod_wait.py``). KubeSpawner's own start runs here, with its own reflectors, against a
stand-in API server; JupyterHub's backoff takes its longest sleep each time (no jitter), so
"before KubeSpawner's next look" is an order of events, not a race against the clock."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import jupyterhub.utils
import pytest
import yaml
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner, clients
from traitlets.config import Config

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.kube import DCloudSpawner
from dcloud_spawner.kube.pod_wait import WakingPodReflector
from tests.conftest import EXAMPLE_CATALOG
from tests.support.fake_kube_api import FakeKubeApi, serve

NS = "dcloud-test"
CPU = {"environment": "scipy", "cpu": 1, "memory": "2Gi"}


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stand-in API server, with KubeSpawner's clients aimed at it for this test only."""
    fake = FakeKubeApi()
    runner, client = await serve(fake)
    await client.api_client.close()
    server = client.api_client.configuration.host
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NS}}],
        "current-context": "fake",
    }
    path = tmp_path / "fake.kubeconfig"
    path.write_text(yaml.safe_dump(config))

    def aim() -> None:  # KubeSpawner caches its configuration and clients per process
        clients.load_config.cache_clear()
        clients._client_cache.clear()

    await KubeSpawner._stop_all_reflectors()
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    # the backoff's longest sleep each time: 0.2, 0.4, 0.8, 1.6 s... with no jitter
    monkeypatch.setattr(jupyterhub.utils, "random", types.SimpleNamespace(uniform=lambda low, high: high))
    aim()
    yield fake
    await KubeSpawner._stop_all_reflectors()
    await fake.end_watches()
    await runner.cleanup()
    aim()


def spawner(**settings) -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(EXAMPLE_CATALOG)
    cfg.DCloudSpawner.show_availability = False
    for key, value in {"namespace": NS, "start_timeout": 30, "k8s_api_request_timeout": 5, **settings}.items():
        setattr(cfg.KubeSpawner, key, value)  # as a site configures KubeSpawner
    made = DCloudSpawner(user=OfflineUser("alice", ("researchers",)), hub=offline_hub(), config=cfg)
    made.api_token = "test-token"
    return made


class Looks:
    """KubeSpawner's own looks at the pod in its final wait (calls of is_pod_running from its start)."""

    def __init__(self, spawner: DCloudSpawner, wanted: int) -> None:
        self.count = 0
        self.reached = asyncio.Event()
        upstream = spawner.is_pod_running

        def is_pod_running(pod):
            if asyncio.current_task() is spawner._start_future:
                self.count += 1
                if self.count >= wanted:
                    self.reached.set()
            return upstream(pod)

        spawner.is_pod_running = is_pod_running


def running(pod: dict) -> dict:
    status = {"name": "notebook", "image": "img", "imageID": "img@sha256:0", "ready": True, "restartCount": 0}
    return {**pod, "status": {"phase": "Running", "podIP": "10.1.2.3", "containerStatuses": [status]}}


def event(pod: dict, n: int, reason: str, message: str) -> dict:
    name = pod["metadata"]["name"]
    return {
        "metadata": {"name": f"{name}.{n}", "namespace": NS, "uid": f"event-{n}"},
        "involvedObject": {"kind": "Pod", "name": name, "namespace": NS},
        "reason": reason,
        "message": message,
        "type": "Normal",
        "lastTimestamp": f"2026-12-01T10:00:0{n}Z",
        "eventTime": None,
    }


async def begin(made: DCloudSpawner) -> tuple[asyncio.Future, asyncio.Future]:
    """JupyterHub's order: options, then start() and progress() side by side."""
    await made.dcloud_apply_user_options(made, dict(CPU))
    starting = asyncio.ensure_future(made.start())
    progress = asyncio.ensure_future(_collect(made.progress()))
    return starting, progress


async def _collect(events) -> list[dict]:
    return [e async for e in events]


async def test_a_pod_that_runs_while_the_backoff_sleeps_returns_at_once(api):
    hooked: list[str] = []

    async def after_pod_created_hook(spawner, pod):
        hooked.append(pod["metadata"]["uid"])

    made = spawner(after_pod_created_hook=after_pod_created_hook)
    looks = Looks(made, 4)  # the 4th look comes 1.4 s in; the next would be 1.6 s later
    starting, progress = await begin(made)
    await asyncio.wait_for(looks.reached.wait(), 10)
    assert isinstance(made.pod_reflector, WakingPodReflector)
    key = f"{NS}/{made.pod_name}"
    pod = api.objects["pods"][key]
    assert hooked == [pod["metadata"]["uid"]]  # KubeSpawner ran the hook before its wait
    await api.put("events", event(pod, 1, "Scheduled", "Successfully assigned to node-1"))
    await api.put("pods", running(pod))

    url = await asyncio.wait_for(starting, 10)
    assert looks.count == 4  # returned before KubeSpawner's backoff looked again
    assert url == "http://10.1.2.3:8888"
    assert made.pod_id == pod["metadata"]["uid"]
    events = await asyncio.wait_for(progress, 5)  # progress ends with the start
    assert any("Successfully assigned to node-1" in e["message"] for e in events)
    await made.stop(now=True)
    assert key not in api.objects["pods"]


async def test_a_start_busy_elsewhere_is_not_cut_short(api):
    """The pod runs while the admin's after_pod_created_hook is still at work: KubeSpawner's
    start goes on, the hook finishes, and KubeSpawner's own wait sees the pod."""
    began, release = asyncio.Event(), asyncio.Event()
    hooked: list[str] = []

    async def after_pod_created_hook(spawner, pod):
        hooked.append("began")
        began.set()
        await release.wait()
        hooked.append("ended")

    made = spawner(after_pod_created_hook=after_pod_created_hook)
    looks = Looks(made, 1)
    starting, progress = await begin(made)
    key = f"{NS}/{made.pod_name}"
    await asyncio.wait_for(began.wait(), 10)
    await api.put("pods", running(api.objects["pods"][key]))
    await asyncio.wait_for(_seen_running(made, key), 5)
    await asyncio.sleep(0.1)  # a cut would happen now
    assert not starting.done() and hooked == ["began"]
    release.set()

    url = await asyncio.wait_for(starting, 10)
    assert hooked == ["began", "ended"] and looks.count == 1  # KubeSpawner's first look saw it running
    assert not made._start_future.cancelled() and made._start_future.result() == url == "http://10.1.2.3:8888"
    assert made.pod_id == api.objects["pods"][key]["metadata"]["uid"]
    await asyncio.wait_for(progress, 5)
    await made.stop(now=True)


async def _seen_running(made: DCloudSpawner, key: str) -> None:
    while (made.pod_reflector.pods.get(key) or {}).get("status", {}).get("phase") != "Running":
        await asyncio.sleep(0.01)


async def test_a_pod_that_never_runs_times_out_as_before(api):
    made = spawner(start_timeout=2)
    looks = Looks(made, 1)
    starting, progress = await begin(made)
    with pytest.raises(TimeoutError, match=r"did not start in 2(\.0)? seconds"):
        await asyncio.wait_for(starting, 10)
    assert looks.count >= 3 and not made._start_future.cancelled()  # KubeSpawner's wait gave up itself
    assert getattr(made, "pod_id", None) is None
    await asyncio.wait_for(progress, 5)
    await made.stop(now=True)


async def test_a_cancelled_start_cancels_kubespawners(api):
    """JupyterHub gives up on a start (or DCloud refuses it): KubeSpawner's start ends too."""
    made = spawner()
    looks = Looks(made, 2)
    starting, progress = await begin(made)
    await asyncio.wait_for(looks.reached.wait(), 10)
    starting.cancel()
    await asyncio.wait([starting])
    await asyncio.wait_for(asyncio.wait([made._start_future]), 5)
    assert made._start_future.cancelled()
    await asyncio.wait_for(progress, 5)
    await made.stop(now=True)


async def test_the_reflector_wakes_waiters_of_one_pod_only(api):
    made = spawner()
    reflector = await made._start_watching_pods()
    assert isinstance(reflector, WakingPodReflector)
    mine, other = reflector.changed(f"{NS}/mine"), reflector.changed(f"{NS}/other")
    reflector.pods[f"{NS}/mine"] = {"metadata": {"name": "mine"}}
    assert mine.done() and not other.done()
    again = reflector.changed(f"{NS}/mine")
    reflector.pods.pop(f"{NS}/mine", None)
    assert again.done()
    reflector.resources = {}  # a new list: everyone looks again
    assert other.done()
    last = reflector.changed(f"{NS}/other")
    await asyncio.sleep(0.05)  # its watch has begun (KubeSpawner's stop raises for one cancelled before)
    await reflector.stop()  # replaced: waiters look at the new one
    assert last.done()
    assert reflector._waiting == {}


# What KubeSpawner 7.1's _start does after its final wait (pod_id, the events' debug log, the
# URL), as a fingerprint of those statements' syntax tree. pod_wait._finish does the same when
# the watch ends the wait early: if upstream adds a step there, this fails, so _finish is
# re-checked against it rather than silently skipping the new step.
AFTER_THE_WAIT = "c24d3bc39f5de8adcc73434b49129bfc57a988b747cabf349b9960fc04c1622f"


def test_what_kubespawner_does_after_its_wait_is_what_finish_does():
    import ast
    import hashlib
    import inspect
    import textwrap

    from kubespawner import KubeSpawner

    function = ast.parse(textwrap.dedent(inspect.getsource(KubeSpawner._start))).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    waits = [i for i, statement in enumerate(function.body) if "is_pod_running" in ast.dump(statement)]
    assert waits, "KubeSpawner._start no longer waits on is_pod_running: re-check dcloud_spawner/kube/pod_wait.py"
    after = function.body[waits[-1] + 1:]
    fingerprint = hashlib.sha256("\n".join(ast.dump(s) for s in after).encode()).hexdigest()
    assert fingerprint == AFTER_THE_WAIT, (
        "KubeSpawner._start changed after its final wait: make pod_wait._finish do what it does now, "
        "then update AFTER_THE_WAIT")
