"""A large simulated fleet for benchmarks: 500 KWOK nodes and 5,000 pods bound to them.

The nodes are KWOK nodes like the test harness's (label ``type=kwok``, so KWOK keeps them
Ready and runs their pods; GPU nodes tainted ``nvidia.com/gpu=present:NoSchedule``;
capacity set through the status subresource); every other node is removed first. The pods
live in their own namespace without Pod Security enforcement and are bound with
``spec.nodeName``, so the scheduler is not involved. How many GPUs each node has in use is
drawn from a seeded generator, so the free counts the form must show are known in advance.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

NAMESPACE = "bench"
BENCH_LABEL = "dcloud.bench/fleet"
PODS_PER_NODE = 10
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
PRODUCT_LABEL = "nvidia.com/gpu.product"
TOLERATION = {**GPU_TAINT, "operator": "Equal"}

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Pool:
    """``count`` identical nodes; ``gpu_class`` is the catalog's id for their accelerator."""

    name: str
    count: int
    cpu: str
    memory: str
    resource: str | None = None
    per_node: int = 0
    gpu_class: str | None = None
    pod_sizes: tuple[int, ...] = (1,)  # GPUs per pod, largest first
    labels: Mapping[str, str] = field(default_factory=dict)


POOLS: tuple[Pool, ...] = (
    Pool("a100", 100, "96", "1Ti", "nvidia.com/gpu", 8, "a100", (8, 4, 2, 1), {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}),
    Pool("t4", 150, "32", "192Gi", "nvidia.com/gpu", 4, "t4", (4, 2, 1), {PRODUCT_LABEL: "Tesla-T4"}),
    Pool(
        "mig",
        50,
        "64",
        "512Gi",
        "nvidia.com/mig-1g.10gb",
        7,
        "a100-mig-1g",
        (1,),
        {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", "nvidia.com/mig.strategy": "mixed"},
    ),
    Pool("cpu", 200, "16", "64Gi"),
)


@dataclass(frozen=True)
class SimulatedNode:
    """One KWOK node of the benchmark's fleet."""

    name: str
    resources: Mapping[str, str]
    labels: Mapping[str, str]
    pool: str = ""

    def manifest(self) -> Manifest:
        gpu = any(key not in ("cpu", "memory", "pods") for key in self.resources)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": self.name, **self.labels},
            },
            "spec": {"providerID": f"kwok://{self.name}", "taints": [GPU_TAINT] if gpu else []},
            "status": {"capacity": dict(self.resources), "allocatable": dict(self.resources)},
        }


@dataclass(frozen=True)
class PodPlan:
    """One pod bound to ``node``, holding ``gpus`` of ``resource`` (0: CPU and memory only)."""

    name: str
    node: str
    resource: str | None
    gpus: int

    def manifest(self) -> Manifest:
        resources: dict[str, dict[str, str]] = {"requests": {"cpu": "500m", "memory": "2Gi"}}
        if self.resource and self.gpus:
            resources["limits"] = {self.resource: str(self.gpus)}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": {BENCH_LABEL: "pod"}},
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": "main", "image": "registry.example.org/train:1", "resources": resources}],
                "tolerations": [TOLERATION],
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
            },
        }


@dataclass(frozen=True)
class Availability:
    """Free and total GPUs of one class, and the most free on a single node."""

    free: int
    total: int
    largest_free_block: int


@dataclass(frozen=True)
class FleetPlan:
    nodes: tuple[SimulatedNode, ...]
    pods: tuple[PodPlan, ...]
    used: Mapping[str, int]  # node name -> GPUs in use

    def expected(self) -> dict[str, Availability]:
        """GPU class id -> what a correct form shows for this fleet."""
        return self.expected_without(())

    def expected_without(self, removed: Iterable[PodPlan], down: Iterable[str] = ()) -> dict[str, Availability]:
        """What a correct form shows once the pods ``removed`` are gone and the nodes ``down``
        (not Ready, or tainted by the node controller) count no more."""
        down = set(down)
        used = dict(self.used)
        for pod in removed:
            if pod.resource and pod.gpus:
                used[pod.node] -= pod.gpus
        result = {}
        for pool in POOLS:
            if pool.gpu_class is None:
                continue
            free = [
                pool.per_node - used[node.name]
                for node in self.nodes
                if node.pool == pool.name and node.name not in down
            ]
            result[pool.gpu_class] = Availability(sum(free), pool.per_node * len(free), max(free, default=0))
        return result


def split(used: int, sizes: tuple[int, ...]) -> list[int]:
    """``used`` GPUs as pod requests, largest first (7 of an A100 node: 4, 2, 1)."""
    parts = []
    for size in sizes:
        while used >= size:
            parts.append(size)
            used -= size
    return parts


def node_for(pool: Pool, index: int, width: int = 3) -> SimulatedNode:
    name = f"bench-{pool.name}-{index:0{width}d}"
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
    if pool.resource:
        resources[pool.resource] = str(pool.per_node)
    return SimulatedNode(name, resources, {**pool.labels, BENCH_LABEL: "node"}, pool.name)


def plan_fleet(seed: int = 500) -> FleetPlan:
    """500 nodes, 10 pods on each; a GPU node has 0..all of its GPUs in use, drawn at random."""
    rng = random.Random(seed)
    nodes, pods, used = [], [], {}
    for pool in POOLS:
        for index in range(pool.count):
            node = node_for(pool, index)
            in_use = rng.randint(0, pool.per_node)
            gpus = split(in_use, pool.pod_sizes)
            gpus += [0] * (PODS_PER_NODE - len(gpus))
            nodes.append(node)
            used[node.name] = in_use
            pods += [PodPlan(f"{node.name}-{j:02d}", node.name, pool.resource, n) for j, n in enumerate(gpus)]
    return FleetPlan(tuple(nodes), tuple(pods), used)


def plan_scaled_fleet(scale: int, seed: int = 500) -> FleetPlan:
    """``scale`` x 500 nodes (the same pools, ``scale`` times as many of each), 10 pods on each.

    Each node's GPUs in use are drawn from a generator seeded with the node's own name, so a
    smaller fleet is exactly a part of a larger one (it grows by adding nodes and pods only).
    """
    nodes, pods, used = [], [], {}
    for pool in POOLS:
        for index in range(pool.count * scale):
            node = node_for(pool, index, width=4)
            in_use = random.Random(f"{seed}/{node.name}").randint(0, pool.per_node)
            gpus = split(in_use, pool.pod_sizes)
            gpus += [0] * (PODS_PER_NODE - len(gpus))
            nodes.append(node)
            used[node.name] = in_use
            pods += [PodPlan(f"{node.name}-{j:02d}", node.name, pool.resource, n) for j, n in enumerate(gpus)]
    return FleetPlan(tuple(nodes), tuple(pods), used)


# -- applying it ----------------------------------------------------------------------------------


def admin_core(kubeconfig: str, workers: int) -> client.CoreV1Api:
    """A CoreV1Api whose connection pool serves ``workers`` threads at once."""
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = workers
    return client.CoreV1Api(client.ApiClient(configuration))


def in_parallel(calls: Iterable[Callable[[], object]], workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _ignore_conflict(call: Callable[[], object]) -> None:
    try:
        call()
    except ApiException as error:
        if error.status != 409:
            raise


def remove_other_nodes(core: client.CoreV1Api) -> None:
    """Delete every node that is not the benchmark's, so that its fleet is the whole cluster."""
    for node in core.list_node(label_selector=f"!{BENCH_LABEL}").items:
        try:
            core.delete_node(node.metadata.name)
        except ApiException as error:
            if error.status != 404:
                raise


def ensure_namespace(core: client.CoreV1Api, timeout: float = 60.0) -> None:
    _ignore_conflict(lambda: core.create_namespace({"metadata": {"name": NAMESPACE}}))
    deadline = time.monotonic() + timeout
    while True:  # the ServiceAccount admission plugin refuses pods until `default` exists
        try:
            core.read_namespaced_service_account("default", NAMESPACE)
            return
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def create_node(core: client.CoreV1Api, node: SimulatedNode) -> None:
    manifest = node.manifest()
    _ignore_conflict(lambda: core.create_node(manifest))
    # the create may drop the status, depending on the version: set it the kubelet's way
    core.patch_node_status(node.name, {"status": manifest["status"]})


def create_nodes(core: client.CoreV1Api, nodes: Iterable[SimulatedNode], workers: int) -> None:
    in_parallel([lambda node=node: create_node(core, node) for node in nodes], workers)


def create_pods(core: client.CoreV1Api, pods: Iterable[PodPlan], workers: int, strict: bool = False) -> None:
    """Create the pods (``strict``: one that exists already is an error, not a reuse)."""

    def create(pod: PodPlan) -> None:
        call = lambda: core.create_namespaced_pod(NAMESPACE, pod.manifest(), _preload_content=False)  # noqa: E731
        call() if strict else _ignore_conflict(call)

    in_parallel([lambda pod=pod: create(pod) for pod in pods], workers)


def delete_pods(core: client.CoreV1Api, pods: Iterable[PodPlan], workers: int) -> None:
    """Delete at once (grace 0), as a node drain or a burst of finished jobs does."""

    def delete(pod: PodPlan) -> None:
        try:
            core.delete_namespaced_pod(pod.name, NAMESPACE, grace_period_seconds=0, _preload_content=False)
        except ApiException as error:
            if error.status != 404:
                raise

    in_parallel([lambda pod=pod: delete(pod) for pod in pods], workers)


def _list(call: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    return json.loads(call(_preload_content=False, **kwargs).data)


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    taints = (node.get("spec") or {}).get("taints") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and not any(
        t["key"].startswith("node.kubernetes.io/") for t in taints
    )


def wait_settled(core: client.CoreV1Api, plan: FleetPlan, timeout: float = 600.0) -> None:
    """Until every benchmark node is Ready and untainted and KWOK runs every pod."""
    deadline = time.monotonic() + timeout

    def settled() -> bool:
        nodes = _list(core.list_node, label_selector=f"{BENCH_LABEL}=node")["items"]
        if sum(map(_node_ready, nodes)) < len(plan.nodes):
            return False
        waiting = _list(core.list_namespaced_pod, namespace=NAMESPACE, limit=1, field_selector="status.phase!=Running")
        return not waiting["items"]

    while not settled():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the simulated fleet did not settle within {timeout:.0f}s")
        time.sleep(2)
