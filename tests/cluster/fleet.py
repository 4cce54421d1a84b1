"""The Kubernetes objects every test cluster gets, created idempotently as admin.

- a simulated fleet of GPU and CPU nodes, managed by KWOK (label ``type=kwok``);
- namespace ``dcloud`` under the ``restricted`` Pod Security standard;
- ServiceAccount ``hub`` with exactly the Role Zero to JupyterHub 4.4.0 gives its hub, plus the
  objects of ``helm-values/rbac.yaml`` when that file exists;
- two dataset claims (``imagenet``, ``medical-scans``), pre-bound to static volumes so that pods
  mounting them can be scheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

NAMESPACE = "dcloud"
HUB = "hub"
DATASETS = ("imagenet", "medical-scans")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
POOL_LABEL = "dcloud.test/pool"
PRODUCT_LABEL = "nvidia.com/gpu.product"
# Marks what the harness applied from helm-values/rbac.yaml, so a later run can prune it.
SOURCE_LABEL = "dcloud.test/source"
FROM_HELM_VALUES = "helm-values-rbac"

# Zero to JupyterHub 4.4.0, templates/hub/rbac.yaml: the hub's whole permission set.
HUB_RULES: list[dict[str, list[str]]] = [
    {
        "apiGroups": [""],
        "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
        "verbs": ["get", "watch", "list", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]

Manifest = dict[str, Any]


@dataclass(frozen=True)
class SimulatedNode:
    """One fake node: KWOK marks it Ready and runs the pods bound to it."""

    name: str
    pool: str
    cpu: str
    memory: str
    accelerators: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory, "pods": "110", **self.accelerators}

    @property
    def taints(self) -> list[dict[str, str]]:
        return [GPU_TAINT] if self.accelerators else []

    def manifest(self) -> Manifest:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    POOL_LABEL: self.pool,
                    **self.labels,
                },
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
            "spec": {"providerID": f"kwok://{self.name}", "taints": self.taints},
            "status": {"capacity": self.resources, "allocatable": self.resources},
        }


_A100 = {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}
_T4 = {PRODUCT_LABEL: "Tesla-T4"}
_MIG = {
    PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
    "nvidia.com/mig.strategy": "mixed",
}

FLEET: tuple[SimulatedNode, ...] = (
    SimulatedNode("a100-0", "a100", "96", "1Ti", {"nvidia.com/gpu": "8"}, _A100),
    SimulatedNode("a100-1", "a100", "96", "1Ti", {"nvidia.com/gpu": "8"}, _A100),
    SimulatedNode("t4-0", "t4", "32", "192Gi", {"nvidia.com/gpu": "4"}, _T4),
    SimulatedNode("t4-1", "t4", "32", "192Gi", {"nvidia.com/gpu": "4"}, _T4),
    SimulatedNode("mig-0", "mig", "64", "512Gi", {"nvidia.com/mig-1g.10gb": "7"}, _MIG),
    SimulatedNode("cpu-0", "cpu", "16", "64Gi"),
    SimulatedNode("cpu-1", "cpu", "16", "64Gi"),
)


def _exists(error: ApiException) -> bool:
    return error.status == 409


def _create_or(create: Callable[[], object], otherwise: Callable[[], object]) -> None:
    try:
        create()
    except ApiException as error:
        if not _exists(error):
            raise
        otherwise()


def _status_matches(node: client.V1Node, wanted: SimulatedNode) -> bool:
    status = node.status
    return bool(
        status
        and status.capacity
        and status.allocatable
        and all(status.capacity.get(k) == v for k, v in wanted.resources.items())
        and all(status.allocatable.get(k) == v for k, v in wanted.resources.items())
    )


def ensure_node(core: client.CoreV1Api, wanted: SimulatedNode) -> None:
    manifest = wanted.manifest()
    try:
        node = core.create_node(manifest)
    except ApiException as error:
        if not _exists(error):
            raise
        node = core.read_node(wanted.name)
        # Keep taints others manage (node.kubernetes.io/not-ready, ...); converge ours.
        serialize = core.api_client.sanitize_for_serialization
        taints = [serialize(t) for t in node.spec.taints or [] if t.key != GPU_TAINT["key"]]
        node = core.patch_node(
            wanted.name,
            {"metadata": {"labels": manifest["metadata"]["labels"]},
             "spec": {"taints": taints + wanted.taints}},
        )  # fmt: skip
    if not _status_matches(node, wanted):
        # Depending on the version, create may drop the status: set it the kubelet's way.
        core.patch_node_status(wanted.name, {"status": manifest["status"]})


def ensure_namespace(core: client.CoreV1Api, namespace: str) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    _create_or(
        lambda: core.create_namespace({"metadata": {"name": namespace, "labels": labels}}),
        lambda: core.patch_namespace(namespace, {"metadata": {"labels": labels}}),
    )


def ensure_hub_account(core: client.CoreV1Api, rbac: client.RbacAuthorizationV1Api, namespace: str) -> None:
    """ServiceAccount, Role and RoleBinding ``hub``, as Zero to JupyterHub 4.4.0 makes them."""
    meta = {"name": HUB, "namespace": namespace, "labels": {SOURCE_LABEL: "z2jh-4.4.0"}}
    _create_or(
        lambda: core.create_namespaced_service_account(namespace, {"metadata": meta}),
        lambda: None,
    )
    role = {"metadata": meta, "rules": HUB_RULES}
    _create_or(
        lambda: rbac.create_namespaced_role(namespace, role),
        lambda: rbac.replace_namespaced_role(HUB, namespace, role),
    )
    binding = {
        "metadata": meta,
        "subjects": [{"kind": "ServiceAccount", "name": HUB, "namespace": namespace}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": HUB},
    }
    _create_or(
        lambda: rbac.create_namespaced_role_binding(namespace, binding),
        lambda: rbac.replace_namespaced_role_binding(HUB, namespace, binding),
    )


def _objects(node: object) -> Iterator[Manifest]:
    """Kubernetes objects anywhere in a YAML document (plain, ``kind: List``, or nested in
    Helm values such as a list of extra objects)."""
    if isinstance(node, dict):
        if "apiVersion" in node and "kind" in node:
            if node["kind"] == "List":
                for item in node.get("items", []):
                    yield from _objects(item)
            else:
                yield node
            return
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from _objects(item)


RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def extra_rbac(path: Path, namespace: str, source: str = FROM_HELM_VALUES) -> list[Manifest]:
    """The RBAC objects of ``path``, bound to ServiceAccounts in ``namespace``."""
    objects = [obj for doc in yaml.safe_load_all(path.read_text()) for obj in _objects(doc)]
    for obj in objects:
        if obj["kind"] not in RBAC_KINDS:
            raise ValueError(f"{path}: only {', '.join(RBAC_KINDS)} are applied, not {obj['kind']}")
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})[SOURCE_LABEL] = source
        if obj["kind"] in ("Role", "RoleBinding"):
            meta["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
    return objects


def _rbac_calls(rbac: client.RbacAuthorizationV1Api, kind: str) -> list[Callable[..., Any]]:
    """create, replace, delete, list for ``kind``; namespaced ones take the namespace last
    (name first) or as the only positional argument."""
    suffix = {
        "ClusterRole": "cluster_role",
        "ClusterRoleBinding": "cluster_role_binding",
        "Role": "namespaced_role",
        "RoleBinding": "namespaced_role_binding",
    }[kind]
    return [getattr(rbac, f"{verb}_{suffix}") for verb in ("create", "replace", "delete", "list")]


def _apply_kind(
    rbac: client.RbacAuthorizationV1Api, kind: str, wanted: list[Manifest], namespace: str, source: str
) -> None:
    create, replace, delete, list_ = _rbac_calls(rbac, kind)
    scope = (namespace,) if kind in ("Role", "RoleBinding") else ()
    for obj in wanted:
        try:
            create(*scope, obj)
        except ApiException as error:
            if not _exists(error):
                raise
            replace(obj["metadata"]["name"], *scope, obj)
    names = {obj["metadata"]["name"] for obj in wanted}
    for applied in list_(*scope, label_selector=f"{SOURCE_LABEL}={source}").items:
        if applied.metadata.name not in names:
            delete(applied.metadata.name, *scope)


def apply_extra_rbac(
    rbac: client.RbacAuthorizationV1Api, path: Path, namespace: str, source: str = FROM_HELM_VALUES
) -> None:
    """Apply ``path`` (when it exists) and prune what an earlier version of it applied. Each
    file needs its own ``source`` (the label value pruning goes by)."""
    objects = extra_rbac(path, namespace, source) if path.is_file() else []
    for kind in RBAC_KINDS:
        _apply_kind(rbac, kind, [obj for obj in objects if obj["kind"] == kind], namespace, source)


def _volume_name(namespace: str, dataset: str) -> str:
    return f"{namespace}-{dataset}"


def ensure_datasets(core: client.CoreV1Api, namespace: str, root: Path | None = None) -> None:
    """Read-only dataset claims, each pre-bound to its own static volume.

    The volumes are host paths under ``root``: with a real node (real-0) they hold a sample
    file each, so a pod can read them; the default is for clusters the harness did not make.
    """
    base = root or Path("/srv/datasets")
    for dataset in DATASETS:
        if root is not None:
            folder = root / dataset
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
            (folder / "README.txt").write_text(f"{dataset}: sample data of the DCloud test cluster\n")
        volume = _volume_name(namespace, dataset)
        claim_ref = {"namespace": namespace, "name": dataset}
        pv = {
            "metadata": {"name": volume, "labels": {"dcloud.test/dataset": dataset}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(base / dataset)},
                "claimRef": claim_ref,
            },
        }
        _create_or(lambda pv=pv: core.create_persistent_volume(pv), lambda: None)
        existing = core.read_persistent_volume(volume)
        if existing.status and existing.status.phase == "Released":
            # Its claim was deleted; free the volume for the claim created below.
            core.patch_persistent_volume(volume, {"spec": {"claimRef": {"uid": None, "resourceVersion": None}}})
        pvc = {
            "metadata": {"name": dataset, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        _create_or(
            lambda pvc=pvc: core.create_namespaced_persistent_volume_claim(namespace, pvc),
            lambda: None,
        )


def issue_hub_token(core: client.CoreV1Api, namespace: str, seconds: int) -> tuple[str, float]:
    """A bound token for ServiceAccount ``hub`` and when it expires (epoch seconds)."""
    request = {"spec": {"expirationSeconds": seconds}}
    reply = core.create_namespaced_service_account_token(HUB, namespace, request)
    return reply.status.token, reply.status.expiration_timestamp.timestamp()


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _ready(node: client.V1Node) -> bool:
    conditions = (node.status and node.status.conditions) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    # The node lifecycle controller lifts this taint once it has seen the node Ready.
    blocked = any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or [])
    return ready and not blocked


def wait_fleet_ready(core: client.CoreV1Api, timeout: float = 60.0) -> None:
    names = {node.name for node in FLEET}

    def ready() -> bool:
        nodes = core.list_node(label_selector="type=kwok").items
        return names <= {node.metadata.name for node in nodes if _ready(node)}

    _wait("the simulated nodes to be Ready and untainted", ready, timeout)


def wait_node_ready(core: client.CoreV1Api, name: str, timeout: float = 60.0) -> None:
    """Wait for one node, e.g. the test agent's, to be Ready and schedulable."""

    def ready() -> bool:
        try:
            return _ready(core.read_node(name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    _wait(f"node {name} to be Ready", ready, timeout)


def wait_namespace_usable(core: client.CoreV1Api, namespace: str, timeout: float = 60.0) -> None:
    """Pods need the namespace's `default` ServiceAccount; dataset pods need bound claims."""

    def has_default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def bound() -> bool:
        claims = core.list_namespaced_persistent_volume_claim(namespace).items
        phases = {c.metadata.name: c.status.phase for c in claims if c.status}
        return all(phases.get(dataset) == "Bound" for dataset in DATASETS)

    _wait(f"ServiceAccount {namespace}/default", has_default_account, timeout)
    _wait(f"dataset claims in {namespace} to bind", bound, timeout)


@dataclass
class Setup:
    """What one run of :func:`apply` did not manage (only when ``forgiving``)."""

    skipped: list[str] = field(default_factory=list)


def apply(
    api: client.ApiClient,
    namespace: str = NAMESPACE,
    rbac_file: Path | None = None,
    *,
    forgiving: bool = False,
    wait: bool = True,
    dataset_root: Path | None = None,
) -> Setup:
    """Create or converge every object above. With ``forgiving``, a step the credentials may not
    take (403) is skipped and reported instead of failing: for clusters the harness did not make.
    """
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    setup = Setup()
    steps: list[tuple[str, Callable[[], None]]] = [
        *[(f"node {node.name}", lambda node=node: ensure_node(core, node)) for node in FLEET],
        (f"namespace {namespace}", lambda: ensure_namespace(core, namespace)),
        ("hub ServiceAccount and RBAC", lambda: ensure_hub_account(core, rbac, namespace)),
        ("datasets", lambda: ensure_datasets(core, namespace, dataset_root)),
    ]
    if rbac_file is not None:
        steps.append((str(rbac_file), lambda: apply_extra_rbac(rbac, rbac_file, namespace)))
    if wait:
        steps += [
            ("fleet Ready", lambda: wait_fleet_ready(core)),
            (f"namespace {namespace} usable", lambda: wait_namespace_usable(core, namespace)),
        ]
    for name, step in steps:
        try:
            step()
        except ApiException as error:
            if not (forgiving and error.status in (401, 403)):
                raise
            setup.skipped.append(f"{name}: {error.status} {error.reason}")
    return setup
