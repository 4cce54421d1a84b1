"""Waiting in line on the real control plane with Kueue v0.17 running and the KWOK fleet.

A real JupyterHub (REST ``user_options``) spawns onto the fleet's 16 A100s. What is checked is
what Kubernetes and Kueue hold (pods, their scheduling gates, Workloads) and what the user is
told (the progress stream, the refusal sentence), never DCloud's own books.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from jupyterhub.spawner import SpawnException
from kubernetes import client

from dcloud_spawner.core.refusals import QUEUE_DOWN
from dcloud_spawner.hub.state import hub_state
from tests.cluster import kueue
from tests.cluster.control_plane import KEEP_RUNNING_LABEL
from tests.support.hub import stop_demo_hub
from tests.support.kube_hub import start_kube_hub
from tests.support.kube_spawners import cluster_spawner
from tests.support.queue_hub import RESEARCHERS_A100, USERS, kueue_objects, queue_catalog, spawn

pytestmark = pytest.mark.cluster

A100 = "NVIDIA A100 80GB"
RESEARCHERS = "group researchers"
FOUR_A100 = {"environment": "pytorch", "gpu": {"type": "a100", "count": 4}}


@pytest.fixture(scope="module")
def queue_setup(kueue_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("queue")
    catalog = queue_catalog(folder / "catalog.yaml")
    with kueue_objects(catalog, kueue_cluster):
        hub = start_kube_hub(folder / "hub", kueue_cluster, catalog=catalog, users=USERS)
        try:
            yield hub, catalog
        finally:
            for user in USERS:
                hub.api("DELETE", f"/users/{user}/servers/gpu")
            stop_demo_hub(hub)


@pytest.fixture
def hub(queue_setup, core, kueue_cluster):
    hub, catalog = queue_setup
    yield hub
    for user in USERS:
        hub.api("DELETE", f"/users/{user}/servers/gpu")
        hub.api("DELETE", f"/users/{user}/servers/second")
    deadline = time.monotonic() + 60
    while pods(core, kueue_cluster.namespace) and time.monotonic() < deadline:
        time.sleep(0.3)
    queue_catalog(catalog)  # a test may have shortened max_wait


@pytest.fixture(scope="module")
def custom(kube_cluster):
    from kubernetes import config as sync_config

    api = sync_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig)
    yield client.CustomObjectsApi(api), client.BatchV1Api(api)
    api.close()


def pods(core, namespace: str, user: str | None = None) -> list:
    selector = f"hub.jupyter.org/username={user}" if user else "kueue.x-k8s.io/queue-name"
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def gated(pod) -> bool:
    return any(g.name == kueue.ADMISSION_GATE for g in pod.spec.scheduling_gates or [])


def workloads_of(custom, namespace: str, pod_name: str) -> list[dict]:
    items = custom[0].list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", namespace, "workloads")["items"]
    return [w for w in items if any(o.get("name") == pod_name for o in w["metadata"].get("ownerReferences", []))]


def wait_until(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def running(core, namespace: str, user: str):
    found = pods(core, namespace, user)
    return found[0] if found and not gated(found[0]) and found[0].status.phase == "Running" else None


def fill_a100s(hub, core, namespace: str) -> None:
    """Staff take all 16 A100s, four each, through everyone's queue."""
    for i in range(1, 5):
        spawn(hub, f"staff-{i}", FOUR_A100)
    for i in range(1, 5):
        wait_until(f"staff-{i} running", lambda i=i: running(core, namespace, f"staff-{i}"), 60)


def test_the_line_moves_in_order(hub, core, kueue_cluster):
    ns = kueue_cluster.namespace
    fill_a100s(hub, core, ns)
    first = spawn(hub, "res-1", {**FOUR_A100, "wait": True})
    first.wait_for("Joined the line of group researchers for 4 × NVIDIA A100 80GB")
    assert first.wait_for("1st in line") == f"Waiting for 4 × {A100}: 1st in line for {RESEARCHERS} (16 of 16 in use)"
    second = spawn(hub, "res-2", {**FOUR_A100, "wait": True})
    assert second.wait_for("in line for") == f"Waiting for 4 × {A100}: 2nd in line for {RESEARCHERS} (16 of 16 in use)"
    assert all(gated(p) for p in pods(core, ns, "res-1") + pods(core, ns, "res-2"))

    stopped = time.monotonic()
    hub.api("DELETE", "/users/staff-1/servers/gpu")
    wait_until("res-1 admitted and running", lambda: running(core, ns, "res-1"), 10)
    admitted_after = time.monotonic() - stopped
    first.wait_for("Admitted by the queue after")
    assert gated(pods(core, ns, "res-2")[0]), "the second in line must still wait"
    assert second.wait_for("1st in line").startswith(f"Waiting for 4 × {A100}: 1st in line for group researchers")

    hub.api("DELETE", "/users/staff-2/servers/gpu")
    wait_until("res-2 admitted and running", lambda: running(core, ns, "res-2"), 10)
    print(f"admitted {admitted_after:.1f}s after the stop")


def test_waiting_too_long_ends_with_one_sentence_and_leaves_nothing(hub, core, custom, kueue_cluster):
    ns = kueue_cluster.namespace
    # longer than JupyterHub's slow_spawn_timeout (10 s), so the REST call returns while it waits
    queue_catalog(hub.state.parent / "catalog.yaml", max_wait="12s")
    fill_a100s(hub, core, ns)
    line = spawn(hub, "res-1", {**FOUR_A100, "wait": True})
    line.wait_for("1st in line")
    pod_name = pods(core, ns, "res-1")[0].metadata.name
    assert workloads_of(custom, ns, pod_name)
    wait_until("the spawn to end", line.done.is_set, 30)
    failed = [e for e in line.events if e.get("failed")]
    # JupyterHub puts "Spawn failed: " before the spawner's sentence on the progress page
    assert failed and failed[-1]["message"] == \
        f"Spawn failed: 4 × {A100} did not become free within 12 seconds; you were 1st in line.", line.events
    wait_until("no pod", lambda: not pods(core, ns, "res-1"), 10)
    wait_until("no workload", lambda: not workloads_of(custom, ns, pod_name), 10)
    _, model = hub.api("GET", "/users/res-1")
    assert "gpu" not in model["servers"]


def test_leaving_the_line_removes_pod_and_workload(hub, core, custom, kueue_cluster):
    ns = kueue_cluster.namespace
    fill_a100s(hub, core, ns)
    line = spawn(hub, "res-3", {**FOUR_A100, "wait": True})
    line.wait_for("1st in line")
    pod_name = pods(core, ns, "res-3")[0].metadata.name
    left = time.monotonic()
    status, _ = hub.api("DELETE", "/users/res-3/servers/gpu")
    assert status in (202, 204)
    wait_until("no pod", lambda: not pods(core, ns, "res-3"), 10)
    wait_until("no workload", lambda: not workloads_of(custom, ns, pod_name), 10)
    print(f"pod and workload gone {time.monotonic() - left:.1f}s after leaving the line")


def batch_job(namespace: str, gpus: int) -> dict:
    container = {
        "name": "train", "image": "registry.invalid/train:1", "command": ["sleep", "3600"],
        "resources": {"requests": {"nvidia.com/gpu": str(gpus), "cpu": "1", "memory": "1Gi"},
                      "limits": {"nvidia.com/gpu": str(gpus), "cpu": "1", "memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "researchers-training", "namespace": namespace,
                     "labels": {kueue.QUEUE_LABEL: "dcloud-researchers"}},
        "spec": {"suspend": True, "parallelism": 1, "completions": 1, "template": {
            "metadata": {"labels": {KEEP_RUNNING_LABEL: "true"}},  # KWOK would finish a Job's pod at once
            "spec": {
            "restartPolicy": "Never", "containers": [container],
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                             "effect": "NoSchedule"}]}}},
    }


def test_a_batch_job_counts_against_the_group_share(hub, core, custom, kueue_cluster):
    ns = kueue_cluster.namespace
    batch = custom[1]
    batch.create_namespaced_job(ns, batch_job(ns, 6))
    try:
        job_pod = wait_until("the job admitted and running", lambda: [
            p for p in core.list_namespaced_pod(ns, label_selector="job-name=researchers-training").items
            if p.status.phase == "Running"], 30)[0]
        assert job_pod.spec.node_name.startswith("a100-")
        # 6 of the researchers' 8 are the job's: 4 more would exceed the share, though 10 A100s are free
        assert RESEARCHERS_A100 == 8
        # without 'wait', Kueue holding the pod back ends the spawn after refuse_after (5 s), with Kueue's reason
        status, body = hub.api("POST", "/users/res-2/servers/gpu", {"user_options": FOUR_A100})
        assert status >= 400, body
        message = body["message"]
        assert message.startswith(f"4 × {A100} cannot start for group researchers right now (the queue says: "), body
        assert message.endswith("; tick 'Wait in line' to wait up to 5 minutes for them."), body
        wait_until("the refused spawn's pod gone", lambda: not pods(core, ns, "res-2"), 15)
        line = spawn(hub, "res-1", {**FOUR_A100, "wait": True})
        assert line.wait_for("in line for") == \
            f"Waiting for 4 × {A100}: 1st in line for group researchers (6 of 16 in use)"
        assert gated(pods(core, ns, "res-1")[0])
        batch.delete_namespaced_job("researchers-training", ns, propagation_policy="Background")
        wait_until("res-1 admitted once the job is gone", lambda: running(core, ns, "res-1"), 15)
    finally:
        try:
            batch.delete_namespaced_job("researchers-training", ns, propagation_policy="Background")
        except client.ApiException as gone:
            assert gone.status == 404


def test_without_wait_a_full_class_is_refused_as_before(hub, core, kueue_cluster):
    fill_a100s(hub, core, kueue_cluster.namespace)
    status, body = hub.api("POST", "/users/res-1/servers/gpu", {"user_options": FOUR_A100})
    assert status == 400
    assert body["message"].startswith(f"No node has 4 free {A100} GPUs right now (0 of 16 free")


def test_one_waiting_server_per_user(hub, core, kueue_cluster):
    fill_a100s(hub, core, kueue_cluster.namespace)
    spawn(hub, "res-1", {**FOUR_A100, "wait": True}).wait_for("1st in line")
    status, body = hub.api("POST", "/users/res-1/servers/second", {"user_options": {
        "environment": "pytorch", "gpu": {"type": "a100", "count": 1}, "wait": True}})
    assert status == 400
    assert body["message"] == ("You already have 1 server waiting in line, and at most 1 may wait at once; "
                               "stop it or let it start before queueing another.")


def test_the_admin_page_and_metrics_show_the_queues(hub, core, kueue_cluster):
    fill_a100s(hub, core, kueue_cluster.namespace)
    spawn(hub, "res-1", {**FOUR_A100, "wait": True}).wait_for("1st in line")

    def admin():
        status, raw = hub.get("/services/dcloud/allocations.json")
        assert status == 200, raw
        rows = {q["name"]: q for q in json.loads(raw)["queues"]}
        return rows if rows.get("dcloud-researchers", {}).get("pending") == 1 else None

    rows = wait_until("the admin view of the line", admin, 15)
    assert rows["dcloud-everyone"]["gpus_admitted"]["a100"] == 16
    assert rows["dcloud-everyone"]["admitted"] == 4

    def metric():
        status, text = hub.get("/hub/metrics")
        line = 'dcloud_gpus_queued{gpu_class="a100"} 4.0'
        return line if status == 200 and line in text.decode() else None

    wait_until("dcloud_gpus_queued", metric, 15)


async def test_kueue_down_fails_a_spawn_at_once(cluster, kueue_cluster, tmp_path):
    catalog = queue_catalog(tmp_path / "catalog.yaml")
    spawner = cluster_spawner(cluster, "queue-down", ["researchers"], catalog=catalog)
    with kueue.stopped(kueue_cluster.run):
        html = await spawner.get_options_form()
        assert 'name="wait"' in html and "NVIDIA A100 80GB · 16 of 16 free" in html  # the form still renders
        await spawner.dcloud_apply_user_options(spawner, {"environment": "pytorch", "gpu": {"type": "a100"},
                                                          "wait": True})
        began = time.monotonic()
        with pytest.raises(SpawnException) as failed:
            await asyncio.wait_for(spawner.start(), 30)
        took = time.monotonic() - began
        assert failed.value.jupyterhub_message == QUEUE_DOWN
        assert took < 5, f"took {took:.1f}s"
        assert hub_state().ledger.claims == []
