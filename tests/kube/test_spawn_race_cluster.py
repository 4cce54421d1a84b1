"""Fifty spawns that really race, through a real JupyterHub on the real control plane.

20 students (group quota: 4 GPUs) and 30 researchers ask for one T4 each at the same moment;
the cluster has 8 T4s. Exactly 8 servers get one; every other request ends with one sentence
(the group quota, or no free T4), and nothing is left pending or held.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request

import pytest

from tests.support.hub import stop_demo_hub
from tests.support.kube_hub import start_kube_hub

pytestmark = pytest.mark.cluster

STUDENTS = [f"rs{i:02d}" for i in range(20)]
RESEARCHERS = [f"rr{i:02d}" for i in range(30)]
ONE_T4 = {"user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 1, "memory": "1Gi"}}
T4_CAPACITY = 8  # t4-0 and t4-1, 4 each (real-0's are behind a taint this hub does not tolerate)
SENTENCES = (
    "Quota of group 'students': its members already run",
    "No node has 1 free NVIDIA T4 16GB GPU right now",
)


@pytest.fixture(scope="module")
def race_hub(kube_cluster, tmp_path_factory):
    users = {**{u: ["students"] for u in STUDENTS}, **{u: ["researchers"] for u in RESEARCHERS}}
    hub = start_kube_hub(tmp_path_factory.mktemp("race-hub"), kube_cluster, users=users)
    yield hub
    for user in users:
        hub.api("DELETE", f"/users/{user}/servers/gpu")
    stop_demo_hub(hub)


def running_pod(core, namespace: str, user: str) -> bool:
    pods = core.list_namespaced_pod(namespace, label_selector=f"hub.jupyter.org/username={user}").items
    return any(p.status.phase == "Running" and p.spec.node_name for p in pods)


def outcome(hub, core, namespace: str, user: str, first: tuple[int, object], timeout: float = 120) -> str:
    """'granted' (its pod runs: KWOK nodes run pods but nothing answers, so it never gets
    ready), or the sentence the user was given."""
    status, body = first
    if status == 400:
        return body["message"]
    assert status in (201, 202), (status, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, model = hub.api("GET", f"/users/{user}")
        server = (model or {}).get("servers", {}).get("gpu")
        if server and running_pod(core, namespace, user):
            return "granted"
        if not server:  # the spawn failed: the progress stream's last event says why
            request = urllib.request.Request(f"{hub.url}/hub/api/users/{user}/servers/gpu/progress",
                                             headers={"Authorization": f"token {hub.token}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                events = [json.loads(line[5:]) for line in response.read().decode().splitlines()
                          if line.startswith("data:")]
            return events[-1]["message"].removeprefix("Spawn failed: ")
        time.sleep(0.5)
    raise AssertionError(f"{user}'s spawn neither finished nor failed")


def test_fifty_racing_spawns_get_exactly_the_capacity(race_hub, kube_cluster, core):
    users = STUDENTS + RESEARCHERS

    def spawn(user: str) -> str:
        first = race_hub.api("POST", f"/users/{user}/servers/gpu", ONE_T4)
        return outcome(race_hub, core, kube_cluster.namespace, user, first)

    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        results = dict(zip(users, pool.map(spawn, users), strict=True))
    granted = sorted(u for u, r in results.items() if r == "granted")
    assert len(granted) == T4_CAPACITY, results
    assert sum(u in STUDENTS for u in granted) <= 4  # the group quota held under the race
    refused = {u: r for u, r in results.items() if r != "granted"}
    assert all(r.startswith(SENTENCES) for r in refused.values()), refused
    assert all(r.count(". ") == 0 or r.endswith(".") for r in refused.values())  # one sentence each

    pods = core.list_namespaced_pod(kube_cluster.namespace, label_selector="dcloud.io/gpu-class=t4").items
    assert sorted(p.metadata.labels["hub.jupyter.org/username"] for p in pods) == granted
    assert all(p.status.phase == "Running" for p in pods)
    time.sleep(5)  # a refused spawn that got as far as a pod (unschedulable) has ended by now
    pods = core.list_namespaced_pod(kube_cluster.namespace, label_selector="dcloud.io/gpu-class=t4").items
    assert sorted(p.metadata.labels["hub.jupyter.org/username"] for p in pods) == granted  # none pending
    status, body = race_hub.api("GET", "/users?state=active")
    assert status == 200
    held = {u["name"] for u in body if u.get("servers")}
    assert held == set(granted)  # every refused spawn let go of what it claimed
