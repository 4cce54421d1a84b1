"""The harness gives what the integration tests rely on: a fleet the real scheduler places GPU
pods on, Pod Security enforced by the real API server, and a hub limited to Zero to JupyterHub's
RBAC."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from tests.cluster import fleet, harness
from tests.cluster.control_plane import NODE_LEASE_SECONDS
from tests.cluster.fixture import KubeCluster

LABEL = {"dcloud.test/harness-test": "true"}
RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _api(kubeconfig: str) -> client.ApiClient:
    return kube_config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture(scope="module")
def admin(kube_cluster: KubeCluster) -> Iterator[client.CoreV1Api]:
    with _api(kube_cluster.admin_kubeconfig) as api:
        yield client.CoreV1Api(api)


@pytest.fixture(scope="module")
def hub(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:
    if kube_cluster.hub_kubeconfig == kube_cluster.admin_kubeconfig:
        pytest.skip("DCLOUD_TEST_KUBECONFIG: no separate hub credentials to test")
    with _api(kube_cluster.hub_kubeconfig) as api:
        yield api


def pod(
    name: str,
    *,
    resources: dict[str, str] | None = None,
    security: dict[str, Any] | None = RESTRICTED_SECURITY,
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "notebook", "image": "registry.k8s.io/pause:3.10"}
    if resources:
        container["resources"] = {"limits": resources, "requests": resources}
    if security:
        container["securityContext"] = security
    return {
        "metadata": {"name": name, "labels": LABEL},
        "spec": {"containers": [container], "automountServiceAccountToken": False, **spec},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_running(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        timeout_seconds=30,
    )
    for event in stream:
        found: client.V1Pod = event["object"]
        if found.status.phase == "Running":
            return found
    raise AssertionError(f"pod {name} not Running: {core.read_namespaced_pod(name, namespace)}")


def delete_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def created(admin: client.CoreV1Api, kube_cluster: KubeCluster) -> Iterator[list[str]]:
    """Names of pods a test created in the namespace; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        delete_pod(admin, kube_cluster.namespace, name)


def test_fleet_is_ready_with_its_accelerators(admin: client.CoreV1Api) -> None:
    nodes = {node.metadata.name: node for node in admin.list_node(label_selector="type=kwok").items}
    assert set(nodes) >= {wanted.name for wanted in fleet.FLEET}
    for wanted in fleet.FLEET:
        node = nodes[wanted.name]
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", wanted.name
        assert node.status.allocatable == wanted.resources
        assert node.spec.provider_id == f"kwok://{wanted.name}"
        assert node.metadata.labels[fleet.POOL_LABEL] == wanted.pool
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        gpu_taint = ("nvidia.com/gpu", "present", "NoSchedule")
        assert (gpu_taint in taints) == bool(wanted.accelerators), wanted.name
    assert nodes["mig-0"].status.allocatable["nvidia.com/mig-1g.10gb"] == "7"
    assert nodes["t4-1"].metadata.labels[fleet.PRODUCT_LABEL] == "Tesla-T4"


def test_kwok_keeps_node_leases_fresh(kube_cluster: KubeCluster) -> None:
    # Without heartbeats the node lifecycle controller would mark the fleet NotReady and
    # evict every pod after its grace period.
    with _api(kube_cluster.admin_kubeconfig) as api:
        leases = client.CoordinationV1Api(api).list_namespaced_lease("kube-node-lease").items
    renewed = {lease.metadata.name: lease.spec.renew_time for lease in leases}
    now = dt.datetime.now(dt.timezone.utc)
    for wanted in fleet.FLEET:
        age = now - renewed[wanted.name]
        assert age < dt.timedelta(seconds=NODE_LEASE_SECONDS), (wanted.name, age)


def test_pod_security_rejects_a_root_pod(admin: client.CoreV1Api, kube_cluster: KubeCluster) -> None:
    with pytest.raises(ApiException) as rejected:
        admin.create_namespaced_pod(kube_cluster.namespace, pod(unique("root"), security=None))
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "runAsNonRoot != true" in message


def test_gpu_pod_runs_on_a_t4_node(admin: client.CoreV1Api, kube_cluster: KubeCluster, created: list[str]) -> None:
    name = unique("t4")
    created.append(name)
    admin.create_namespaced_pod(
        kube_cluster.namespace,
        pod(
            name,
            resources={"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
            nodeSelector={fleet.PRODUCT_LABEL: "Tesla-T4"},
            tolerations=[GPU_TOLERATION],
        ),
    )
    running = wait_running(admin, kube_cluster.namespace, name)
    assert running.spec.node_name in ("t4-0", "t4-1")
    assert running.status.pod_ip.startswith("127.1.")


def test_gpu_pod_without_toleration_stays_pending(
    admin: client.CoreV1Api, kube_cluster: KubeCluster, created: list[str]
) -> None:
    name = unique("untolerated")
    created.append(name)
    admin.create_namespaced_pod(kube_cluster.namespace, pod(name, resources={"nvidia.com/gpu": "1"}))
    stream = watch.Watch().stream(
        admin.list_namespaced_pod,
        kube_cluster.namespace,
        field_selector=f"metadata.name={name}",
        timeout_seconds=20,
    )
    for event in stream:
        conditions = event["object"].status.conditions or []
        scheduled = [c for c in conditions if c.type == "PodScheduled"]
        if scheduled and scheduled[0].reason == "Unschedulable":
            assert "untolerated taint" in scheduled[0].message
            assert event["object"].spec.node_name is None
            return
    raise AssertionError("the scheduler never reported the pod Unschedulable")


def test_dataset_claims_are_bound_and_mountable(
    admin: client.CoreV1Api, kube_cluster: KubeCluster, created: list[str]
) -> None:
    name = unique("datasets")
    created.append(name)
    volumes = [{"name": d, "persistentVolumeClaim": {"claimName": d, "readOnly": True}} for d in fleet.DATASETS]
    manifest = pod(name, volumes=volumes)
    manifest["spec"]["containers"][0]["volumeMounts"] = [
        {"name": d, "mountPath": f"/datasets/{d}", "readOnly": True} for d in fleet.DATASETS
    ]
    admin.create_namespaced_pod(kube_cluster.namespace, manifest)
    assert wait_running(admin, kube_cluster.namespace, name).spec.node_name


def _allowed(api: client.ApiClient, verb: str, resource: str, namespace: str | None) -> bool:
    review = {"spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace}}}
    reply = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(reply.status.allowed)


def test_hub_manages_pods_in_its_namespace_only(
    hub: client.ApiClient, kube_cluster: KubeCluster, created: list[str]
) -> None:
    core, namespace = client.CoreV1Api(hub), kube_cluster.namespace
    name = unique("hub")
    created.append(name)
    core.create_namespaced_pod(namespace, pod(name))
    assert name in {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
    events = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        timeout_seconds=5,
    )
    assert next(iter(events))["object"].metadata.name == name
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    with pytest.raises(ApiException) as forbidden:
        core.create_namespaced_pod("default", pod(unique("elsewhere")))
    assert forbidden.value.status == 403
    assert not _allowed(hub, "create", "configmaps", namespace)
    assert not _allowed(hub, "update", "pods", namespace)


def test_hub_reads_nodes_only_when_the_chart_grants_it(hub: client.ApiClient) -> None:
    granted = harness.RBAC_FILE.is_file() and any(
        obj["kind"] == "ClusterRole"
        and any(
            "nodes" in rule.get("resources", []) and "list" in rule.get("verbs", []) for rule in obj.get("rules", [])
        )
        for obj in fleet.extra_rbac(harness.RBAC_FILE, fleet.NAMESPACE)
    )
    core = client.CoreV1Api(hub)
    if granted:
        assert {n.metadata.name for n in core.list_node().items} >= {n.name for n in fleet.FLEET}
    else:
        with pytest.raises(ApiException) as forbidden:
            core.list_node()
        assert forbidden.value.status == 403


@pytest.mark.usefixtures("hub")  # only where the harness made the hub account
def test_hub_role_is_exactly_zero_to_jupyterhubs(kube_cluster: KubeCluster) -> None:
    with _api(kube_cluster.admin_kubeconfig) as api:
        role = client.RbacAuthorizationV1Api(api).read_namespaced_role(fleet.HUB, kube_cluster.namespace)
        rules = api.sanitize_for_serialization(role.rules)
    assert rules == fleet.HUB_RULES
