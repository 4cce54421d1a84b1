"""Kueue v0.17 runs beside the test control plane for real: its CRDs are served, a labelled Pod
in the notebook namespace is gated, queued, admitted and run, the visibility API reports the
pod over quota with its position, other pods never see Kueue, and with Kueue down a queued pod
is refused at once while other pods are not."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from tests.cluster import fleet, kueue
from tests.cluster.control_plane import KEEP_RUNNING_LABEL
from tests.cluster.fixture import KubeCluster, kueue_cluster, unavailable  # noqa: F401 (fixture)
from tests.cluster.layout import kueue_manifests_dir

RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
TEST_LABEL = "dcloud.test/kueue-test"
CPU_QUOTA = "1"
POD_CPU = "600m"  # one pod fits the quota, two do not


@pytest.fixture(scope="module")
def api(kueue_cluster: KubeCluster) -> Iterator[client.ApiClient]:  # noqa: F811 (fixture)
    with kube_config.new_client_from_config(config_file=kueue_cluster.admin_kubeconfig) as admin:
        yield admin


@pytest.fixture(scope="module")
def namespace(kueue_cluster: KubeCluster) -> str:  # noqa: F811 (fixture)
    return kueue_cluster.namespace


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def kueue_object(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {TEST_LABEL: "true"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": f"{kueue.GROUP}/{kueue.API_VERSION}", "kind": kind, "metadata": meta, "spec": spec}


@pytest.fixture(scope="module")
def other_namespace(api: client.ApiClient) -> Iterator[str]:
    """A namespace besides the notebook one, where Kueue must not reach."""
    core = client.CoreV1Api(api)
    name = unique("dcloud-test-other")
    core.create_namespace({"metadata": {"name": name, "labels": {TEST_LABEL: "true"}}})
    try:
        fleet._wait(f"ServiceAccount {name}/default", lambda: _has_default_account(core, name), 30)
        yield name
    finally:
        core.delete_namespace(name)


def _has_default_account(core: client.CoreV1Api, namespace: str) -> bool:
    return bool(core.list_namespaced_service_account(namespace, field_selector="metadata.name=default").items)


@pytest.fixture(scope="module")
def queue(api: client.ApiClient, namespace: str) -> Iterator[dict[str, str]]:
    """A ResourceFlavor, a ClusterQueue admitting only from the notebook namespace with 1 CPU
    of quota, and a LocalQueue there; removed afterwards."""
    custom = client.CustomObjectsApi(api)
    names = {"flavor": unique("dcloud-test-flavor"), "cluster_queue": unique("dcloud-test-cq")}
    names["local_queue"] = unique("dcloud-test-lq")
    flavor = kueue_object("ResourceFlavor", names["flavor"], {})
    cluster_queue = kueue_object(
        "ClusterQueue",
        names["cluster_queue"],
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory"],
                    "flavors": [
                        {
                            "name": names["flavor"],
                            "resources": [
                                {"name": "cpu", "nominalQuota": CPU_QUOTA},
                                {"name": "memory", "nominalQuota": "4Gi"},
                            ],
                        }
                    ],
                }
            ],
        },
    )
    local_queue = kueue_object("LocalQueue", names["local_queue"], {"clusterQueue": names["cluster_queue"]}, namespace)
    custom.create_cluster_custom_object(kueue.GROUP, kueue.API_VERSION, "resourceflavors", flavor)
    custom.create_cluster_custom_object(kueue.GROUP, kueue.API_VERSION, "clusterqueues", cluster_queue)
    custom.create_namespaced_custom_object(kueue.GROUP, kueue.API_VERSION, namespace, "localqueues", local_queue)
    try:
        fleet._wait("the ClusterQueue to be active", lambda: _active(custom, names["cluster_queue"]), 30)
        yield names
    finally:
        core = client.CoreV1Api(api)
        for pod in core.list_namespaced_pod(namespace, label_selector=f"{TEST_LABEL}=true").items:
            _delete_pod(core, namespace, pod.metadata.name)
        fleet._wait("the test pods to be gone", lambda: not _test_pods(core, namespace), 60)
        _delete(lambda: custom.delete_namespaced_custom_object(
            kueue.GROUP, kueue.API_VERSION, namespace, "localqueues", names["local_queue"]))  # fmt: skip
        _delete(lambda: custom.delete_cluster_custom_object(
            kueue.GROUP, kueue.API_VERSION, "clusterqueues", names["cluster_queue"]))  # fmt: skip
        _delete(lambda: custom.delete_cluster_custom_object(
            kueue.GROUP, kueue.API_VERSION, "resourceflavors", names["flavor"]))  # fmt: skip


def _active(custom: client.CustomObjectsApi, name: str) -> bool:
    found = custom.get_cluster_custom_object(kueue.GROUP, kueue.API_VERSION, "clusterqueues", name)
    conditions = found.get("status", {}).get("conditions", [])
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


def _delete(call: Any) -> None:
    try:
        call()
    except ApiException as error:
        if error.status != 404:
            raise


def _delete_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    _delete(lambda: core.delete_namespaced_pod(name, namespace, grace_period_seconds=0))


def _test_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"{TEST_LABEL}=true").items)


def pod(name: str, queue_name: str | None) -> dict[str, Any]:
    labels = {TEST_LABEL: "true"}
    if queue_name:
        labels[kueue.QUEUE_LABEL] = queue_name
    resources = {"cpu": POD_CPU, "memory": "256Mi"}
    container = {
        "name": "notebook",
        "image": "registry.k8s.io/pause:3.10",
        "resources": {"requests": resources, "limits": resources},
        "securityContext": RESTRICTED_SECURITY,
    }
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [container],
            "automountServiceAccountToken": False,
            "nodeSelector": {fleet.POOL_LABEL: "cpu"},
        },
    }


def gates(found: client.V1Pod) -> list[str]:
    return [gate.name for gate in found.spec.scheduling_gates or []]


def workload_of(api: client.ApiClient, namespace: str, found: client.V1Pod) -> dict[str, Any] | None:
    workloads = client.CustomObjectsApi(api).list_namespaced_custom_object(
        kueue.GROUP, kueue.API_VERSION, namespace, "workloads"
    )["items"]
    for workload in workloads:
        owners = workload["metadata"].get("ownerReferences", [])
        if any(owner["uid"] == found.metadata.uid for owner in owners):
            return dict(workload)
    return None


def condition(workload: dict[str, Any] | None, kind: str) -> str | None:
    for found in (workload or {}).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return str(found["status"])
    return None


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_crds_are_served_at_v1beta2(api: client.ApiClient) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    shipped = [yaml.load(path.read_text(), Loader=loader) for path in (kueue_manifests_dir() / "crd").glob("*.yaml")]
    assert len(shipped) >= 10
    for crd in shipped:
        name = crd["metadata"]["name"]
        found = kueue.get(api, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        served = {version["name"] for version in found["spec"]["versions"] if version["served"]}
        assert kueue.API_VERSION in served, name
        established = {c["type"]: c["status"] for c in found["status"]["conditions"]}["Established"]
        assert established == "True", name
    kinds = {r.kind for r in client.CustomObjectsApi(api).get_api_resources(kueue.GROUP, kueue.API_VERSION).resources}
    assert {"ResourceFlavor", "ClusterQueue", "LocalQueue", "Workload", "Cohort"} <= kinds


def test_webhook_rejects_an_invalid_cluster_queue(api: client.ApiClient) -> None:
    """Kueue's own validating webhook answers: the CRD schema allows this, Kueue does not."""
    bad = kueue_object(
        "ClusterQueue",
        unique("dcloud-test-bad"),
        {"resourceGroups": [{"coveredResources": ["cpu"], "flavors": []}]},
    )
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            kueue.GROUP, kueue.API_VERSION, "clusterqueues", bad, dry_run="All"
        )
    assert refused.value.status in (400, 422), refused.value.body


def test_queued_pods_are_gated_admitted_in_order_and_visible(
    api: client.ApiClient,
    namespace: str,
    queue: dict[str, str],
    kueue_cluster: KubeCluster,  # noqa: F811 (fixture)
) -> None:
    hub_kubeconfig = kueue_cluster.hub_kubeconfig
    core = client.CoreV1Api(api)
    first = core.create_namespaced_pod(namespace, pod(unique("queued"), queue["local_queue"]))
    # The mutating webhook gated it in the create call itself.
    assert kueue.ADMISSION_GATE in gates(first)
    workload = wait_for("the first pod's Workload to be admitted", lambda: _admitted(api, namespace, first))
    assert workload["spec"]["queueName"] == queue["local_queue"]
    assert workload["status"]["admission"]["clusterQueue"] == queue["cluster_queue"]
    running = wait_for("the first pod to run", lambda: _running(core, namespace, first.metadata.name))
    assert gates(running) == []
    assert running.spec.node_name in {node.name for node in fleet.FLEET if node.pool == "cpu"}

    second = core.create_namespaced_pod(namespace, pod(unique("over-quota"), queue["local_queue"]))
    assert kueue.ADMISSION_GATE in gates(second)
    pending = wait_for(
        "the second pod in the visibility API",
        lambda: [w for w in kueue.pending_workloads(api, queue["cluster_queue"]) if _owned_by(w, second)],
    )
    assert pending[0]["positionInClusterQueue"] == 0
    assert pending[0]["positionInLocalQueue"] == 0
    assert pending[0]["localQueueName"] == queue["local_queue"]
    workload = workload_of(api, namespace, second)
    assert condition(workload, "QuotaReserved") == "False"
    assert condition(workload, "Admitted") != "True"
    still = core.read_namespaced_pod(second.metadata.name, namespace)
    assert kueue.ADMISSION_GATE in gates(still) and still.spec.node_name is None

    # The local-queue view of the same line, read with the hub's token (helm-values/rbac-kueue.yaml):
    # the API server passes the ServiceAccount on to Kueue's server, which asks it back for RBAC.
    path = (
        f"/apis/{kueue.VISIBILITY_GROUP}/{kueue.VISIBILITY_VERSIONS[0]}/namespaces/{namespace}"
        f"/localqueues/{queue['local_queue']}/pendingworkloads"
    )
    with kube_config.new_client_from_config(config_file=hub_kubeconfig) as hub:
        items = kueue.get(hub, path)["items"]
    assert [item["metadata"]["name"] for item in items] == [pending[0]["metadata"]["name"]]

    # Freeing the quota admits the waiting pod.
    _delete_pod(core, namespace, first.metadata.name)
    wait_for("the second pod to be admitted", lambda: _admitted(api, namespace, second), timeout=30)
    wait_for("the second pod to run", lambda: _running(core, namespace, second.metadata.name))


def _owned_by(pending: dict[str, Any], found: client.V1Pod) -> bool:
    owners = pending["metadata"].get("ownerReferences", [])
    return any(owner["uid"] == found.metadata.uid for owner in owners)


def _admitted(api: client.ApiClient, namespace: str, found: client.V1Pod) -> dict[str, Any] | None:
    workload = workload_of(api, namespace, found)
    return workload if condition(workload, "Admitted") == "True" else None


def _running(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    found = core.read_namespaced_pod(name, namespace)
    return found if found.status.phase == "Running" else None


def test_unlabelled_pod_is_untouched(api: client.ApiClient, namespace: str, queue: dict[str, str]) -> None:
    core = client.CoreV1Api(api)
    plain = core.create_namespaced_pod(namespace, pod(unique("plain"), None))
    assert gates(plain) == []
    assert not any(key.startswith("kueue.x-k8s.io/") for key in plain.metadata.labels)
    assert not plain.metadata.finalizers
    wait_for("the plain pod to run", lambda: _running(core, namespace, plain.metadata.name))
    assert workload_of(api, namespace, plain) is None


def test_kueue_down_refuses_queued_pods_at_once_and_no_others(
    api: client.ApiClient,
    namespace: str,
    other_namespace: str,
    queue: dict[str, str],
    kueue_cluster: KubeCluster,  # noqa: F811 (fixture)
) -> None:
    if kueue_cluster.run is None:
        unavailable("DCLOUD_TEST_KUBECONFIG: this session cannot stop that cluster's Kueue")
    core = client.CoreV1Api(api)
    with kueue.stopped(kueue_cluster.run, api):
        began = time.monotonic()
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, pod(unique("refused"), queue["local_queue"]))
        elapsed = time.monotonic() - began
        plain = core.create_namespaced_pod(namespace, pod(unique("plain-while-down"), None))
        # The label outside the notebook namespace: no webhook, so no refusal either.
        elsewhere = core.create_namespaced_pod(other_namespace, pod(unique("elsewhere"), queue["local_queue"]))
    assert elapsed < 5, f"the refusal took {elapsed:.1f}s"
    assert refused.value.status == 500, refused.value.body
    assert "failed calling webhook" in refused.value.body and "mpod.kb.io" in refused.value.body
    assert gates(plain) == []
    assert gates(elsewhere) == []
    assert not _test_pods_named(core, namespace, "refused")
    # Back up: a queued pod is gated again.
    again = core.create_namespaced_pod(namespace, pod(unique("after"), queue["local_queue"]))
    assert kueue.ADMISSION_GATE in gates(again)


def _test_pods_named(core: client.CoreV1Api, namespace: str, prefix: str) -> list[str]:
    return [p.metadata.name for p in _test_pods(core, namespace) if p.metadata.name.startswith(prefix + "-")]


def test_hung_kueue_refuses_queued_pods_within_five_seconds(
    api: client.ApiClient,
    namespace: str,
    queue: dict[str, str],
    kueue_cluster: KubeCluster,  # noqa: F811 (fixture)
) -> None:
    if kueue_cluster.run is None:
        unavailable("DCLOUD_TEST_KUBECONFIG: this session cannot stop that cluster's Kueue")
    core = client.CoreV1Api(api)
    with kueue.frozen(kueue_cluster.run, api):
        began = time.monotonic()
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, pod(unique("refused"), queue["local_queue"]))
        elapsed = time.monotonic() - began
    assert elapsed < 5, f"the refusal took {elapsed:.1f}s"
    assert "failed calling webhook" in refused.value.body and "mpod.kb.io" in refused.value.body
    assert not _test_pods_named(core, namespace, "refused")


def test_batch_job_is_queued_and_counts_against_the_quota(
    api: client.ApiClient, namespace: str, queue: dict[str, str]
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    for found in _test_pods(core, namespace):  # what earlier tests left in the queue
        _delete_pod(core, namespace, found.metadata.name)
    wait_for("the queue's pods to be gone", lambda: not _test_pods(core, namespace))
    template = pod("unused", None)
    template["spec"]["restartPolicy"] = "Never"
    # KWOK would end the Job's pod at once; this label keeps it running (control_plane.py).
    pod_labels = {TEST_LABEL: "true", KEEP_RUNNING_LABEL: "true"}
    job = {
        "metadata": {"name": unique("batch"), "labels": {TEST_LABEL: "true", kueue.QUEUE_LABEL: queue["local_queue"]}},
        "spec": {"template": {"metadata": {"labels": pod_labels}, "spec": template["spec"]}, "backoffLimit": 0},
    }
    created = batch.create_namespaced_job(namespace, job)
    try:
        assert created.spec.suspend is True  # Kueue's webhook suspended it until admission
        wait_for("the Job's workload to be admitted", lambda: _admitted(api, namespace, created))
        wait_for("the Job's pod to run", lambda: _job_running(core, namespace, created.metadata.name))
        waiting = core.create_namespaced_pod(namespace, pod(unique("behind-job"), queue["local_queue"]))
        pending = wait_for(
            "the pod behind the Job in the visibility API",
            lambda: [w for w in kueue.pending_workloads(api, queue["cluster_queue"]) if _owned_by(w, waiting)],
        )
        assert pending[0]["positionInClusterQueue"] == 0
        assert kueue.ADMISSION_GATE in gates(core.read_namespaced_pod(waiting.metadata.name, namespace))
        assert _job_running(core, namespace, created.metadata.name)  # still holding the quota
        # The Job ends: its quota goes to the pod that waited.
        batch.delete_namespaced_job(created.metadata.name, namespace, propagation_policy="Background")
        wait_for("the waiting pod to be admitted", lambda: _admitted(api, namespace, waiting))
    finally:
        _delete(lambda: batch.delete_namespaced_job(created.metadata.name, namespace, propagation_policy="Background"))


def _job_running(core: client.CoreV1Api, namespace: str, job: str) -> bool:
    found = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return bool(found) and all(p.status.phase == "Running" for p in found)
