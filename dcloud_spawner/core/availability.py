"""GPU availability: free and total GPUs per class, computed from Node and Pod objects.

Free GPUs of a class = allocatable on the Ready, schedulable nodes of that class minus
what non-terminated pods on them request. Pure: the Kubernetes backend feeds it from its
watch caches (``kube/watch.py``); the form, the admin page and the metrics show it.

Two ways to the same numbers: :func:`compute` counts from whole objects, from scratch;
:class:`LiveAvailability` keeps only the few facts it needs per Node and Pod and adjusts
per-node free counts with each change (what the hub runs, at any cluster size).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .catalog import Catalog, GpuClass
from .quantity import parse_quantity


@dataclass(frozen=True)
class GpuAvailability:
    """Free and total GPUs of one class right now."""

    free: int
    total: int
    largest_free_block: int = 0  # most GPUs of this class free on a single node


def _amount(value: Any) -> Decimal:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return Decimal(value)  # the usual GPU count: skip the general quantity parser
    try:
        return parse_quantity(value)
    except ValueError:
        return Decimal(0)


def pod_request(pod: Mapping[str, Any], resource: str) -> Decimal:
    """What a pod holds of ``resource`` while it runs: the larger of its containers' sum
    and its largest init container (limits stand in for missing requests, as for GPUs)."""
    spec = pod.get("spec") or {}

    def one(container: Mapping[str, Any]) -> Decimal:
        res = container.get("resources") or {}
        value = (res.get("requests") or {}).get(resource)
        if value is None:
            value = (res.get("limits") or {}).get(resource)
        return Decimal(0) if value is None else _amount(value)

    running = sum((one(c) for c in spec.get("containers") or []), Decimal(0))
    init = max((one(c) for c in spec.get("initContainers") or []), default=Decimal(0))
    return max(running, init)


def _ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _tolerated(gpu: GpuClass, node: Mapping[str, Any]) -> bool:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.key == taint.get("key")
            and (t.effect is None or t.effect == taint.get("effect"))
            and (t.operator == "Exists" or t.value == taint.get("value"))
            for t in gpu.tolerations
        ):
            return False
    return True


def node_serves(gpu: GpuClass, node: Mapping[str, Any]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return (
        _amount(allocatable.get(gpu.resource, 0)) > 0
        and all(labels.get(k) == v for k, v in gpu.node_selector.items())
        and _ready(node)
        and _tolerated(gpu, node)
    )


PodHolding = tuple[str, dict[str, Decimal]]  # (node name, resource -> amount)


def pod_holding(pod: Mapping[str, Any], resources: Iterable[str]) -> PodHolding | None:
    """Which node a pod holds GPU resources on, and how many; None if it holds none."""
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    amounts = {r: a for r in resources if (a := pod_request(pod, r))}
    return (node_name, amounts) if amounts else None


def compute(
    catalog: Catalog,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    holding: Callable[[Mapping[str, Any]], PodHolding | None] | None = None,
) -> dict[str, GpuAvailability]:
    """GPU class id -> free and total GPUs now (pure; the caches feed it).

    ``holding`` may answer :func:`pod_holding` from a cache (the hub keeps one per pod
    resourceVersion, so only changed pods are read again).
    """
    nodes = list(nodes)
    resources = sorted({g.resource for g in catalog.gpu_classes})
    holding = holding or (lambda pod: pod_holding(pod, resources))
    held: dict[tuple[str, str], Decimal] = {}
    for pod in pods:
        found = holding(pod)
        if found is not None:
            node_name, amounts = found
            for resource, amount in amounts.items():
                held[(node_name, resource)] = held.get((node_name, resource), Decimal(0)) + amount
    result = {}
    for gpu in catalog.gpu_classes:
        total = free = largest = 0
        for node in nodes:
            if not node_serves(gpu, node):
                continue
            name = node["metadata"]["name"]
            capacity = int(_amount(node["status"]["allocatable"][gpu.resource]))
            available = max(0, capacity - int(held.get((name, gpu.resource), 0)))
            total += capacity
            free += available
            largest = max(largest, available)
        result[gpu.id] = GpuAvailability(free=free, total=total, largest_free_block=largest)
    return result


# -- kept up to date change by change (the hub's watch caches feed this) ----------------------------

# What availability needs of a Node, and nothing else: the watches keep one of these per node
# instead of the object (a Node is tens of KiB with its images and conditions).
Amounts = tuple[tuple[str, int], ...]  # (extended resource, amount), sorted


@dataclass(frozen=True, slots=True)
class NodeFacts:
    labels: Mapping[str, str]
    taints: tuple[tuple[Any, Any, str], ...]  # (key, value, effect) of the NoSchedule/NoExecute ones
    allocatable: Amounts  # extended resources only (GPUs, MIG slices)
    schedulable: bool  # Ready and not cordoned


PodFacts = tuple[str, Amounts]  # (node name, or "" while unbound; extended resources held)

_NONE: Amounts = ()


def _extended(name: str) -> bool:
    return "/" in name  # extended resources carry a domain (nvidia.com/gpu); cpu, memory do not


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    """The part of a Node that availability reads (strings interned: every node repeats them)."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    taints = tuple(
        (t.get("key"), t.get("value"), sys.intern(t["effect"]))
        for t in spec.get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute")
    )
    allocatable = tuple(
        sorted(
            (sys.intern(name), int(_amount(value)))
            for name, value in (status.get("allocatable") or {}).items()
            if _extended(name)
        )
    )
    return NodeFacts(
        labels={sys.intern(k): sys.intern(str(v)) for k, v in labels.items()},
        taints=taints,
        allocatable=allocatable,
        schedulable=_ready(node),
    )


def pod_facts(pod: Mapping[str, Any]) -> PodFacts | None:
    """Where a pod is and which extended resources it holds; None once it has finished."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    spec = pod.get("spec") or {}
    names: set[str] = set()
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        for part in (resources.get("requests"), resources.get("limits")):
            if part:
                names.update(name for name in part if _extended(name))
    amounts = tuple(sorted((sys.intern(r), n) for r in names if (n := int(pod_request(pod, r))) > 0))
    return sys.intern(spec.get("nodeName") or ""), amounts or _NONE


def add_held(held: dict[tuple[str, str], int], facts: PodFacts | None, sign: int = 1) -> None:
    """Add (or with ``sign=-1`` take away) what one pod holds to per-(node, resource) sums."""
    if facts is None or not facts[0]:
        return
    node, amounts = facts
    for resource, amount in amounts:
        key = (node, resource)
        value = held.get(key, 0) + sign * amount
        if value:
            held[key] = value
        else:
            held.pop(key, None)


def capacity_for(gpu: GpuClass, facts: NodeFacts | None) -> int:
    """How many GPUs of ``gpu``'s class the node offers (0: it does not serve the class)."""
    if facts is None or not facts.schedulable:
        return 0
    capacity = next((n for r, n in facts.allocatable if r == gpu.resource), 0)
    if capacity <= 0 or any(facts.labels.get(k) != v for k, v in gpu.node_selector.items()):
        return 0
    for key, value, effect in facts.taints:
        if not any(
            t.key == key and (t.effect is None or t.effect == effect) and (t.operator == "Exists" or t.value == value)
            for t in gpu.tolerations
        ):
            return 0
    return capacity


class _ClassTally:
    """One GPU class: capacity and free GPUs of each node serving it, and their sums."""

    __slots__ = ("blocks", "capacity", "free", "free_sum", "gpu", "total")

    def __init__(self, gpu: GpuClass) -> None:
        self.gpu = gpu
        self.capacity: dict[str, int] = {}
        self.free: dict[str, int] = {}
        self.total = self.free_sum = 0
        self.blocks: dict[int, int] = {}  # free GPUs on a node -> how many nodes have that many

    def set(self, node: str, capacity: int, held: int) -> None:
        old = self.free.pop(node, None)
        if old is not None:
            self.total -= self.capacity.pop(node)
            self.free_sum -= old
            left = self.blocks[old] - 1
            if left:
                self.blocks[old] = left
            else:
                del self.blocks[old]
        if capacity > 0:
            free = max(0, capacity - held)
            self.capacity[node], self.free[node] = capacity, free
            self.total += capacity
            self.free_sum += free
            self.blocks[free] = self.blocks.get(free, 0) + 1

    def availability(self) -> GpuAvailability:
        return GpuAvailability(free=self.free_sum, total=self.total, largest_free_block=max(self.blocks, default=0))


class _Tallies:
    """Every GPU class of one catalog, built once from the facts, then adjusted per change."""

    def __init__(
        self, gpu_classes: list[GpuClass], nodes: Mapping[str, NodeFacts], held: Mapping[tuple[str, str], int]
    ) -> None:
        self.gpu_classes = list(gpu_classes)
        self.classes = [_ClassTally(gpu) for gpu in gpu_classes]
        self.by_resource: dict[str, list[_ClassTally]] = {}
        for tally in self.classes:
            self.by_resource.setdefault(tally.gpu.resource, []).append(tally)
        for name, facts in nodes.items():
            self.node(name, facts, held)

    def node(self, name: str, facts: NodeFacts | None, held: Mapping[tuple[str, str], int]) -> None:
        for tally in self.classes:
            tally.set(name, capacity_for(tally.gpu, facts), held.get((name, tally.gpu.resource), 0))

    def held(self, node: str, resource: str, amount: int) -> None:
        for tally in self.by_resource.get(resource, ()):
            capacity = tally.capacity.get(node)
            if capacity is not None:
                tally.set(node, capacity, amount)

    def result(self) -> dict[str, GpuAvailability]:
        return {tally.gpu.id: tally.availability() for tally in self.classes}


class LiveAvailability:
    """The lean facts of every Node and non-finished Pod, and free GPUs per class kept current
    by each change: an answer costs nothing however many pods the cluster runs.

    Equal, after any sequence of changes, to :func:`compute` over the same objects (the tests
    check this on random sequences). Not thread-safe: fed and read on the hub's event loop.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeFacts] = {}
        self.pods: dict[str, PodFacts] = {}
        self.held: dict[tuple[str, str], int] = {}  # (node, resource) -> held by its pods
        self._tallies: _Tallies | None = None
        self._memo: dict[str, GpuAvailability] | None = None

    def set_node(self, name: str, facts: NodeFacts | None) -> None:
        old = self.nodes.pop(name, None) if facts is None else self.nodes.get(name)
        if facts is not None:
            self.nodes[name] = facts
        if old != facts:
            self._node_changed(name, facts)

    def set_pod(self, key: str, facts: PodFacts | None) -> None:
        old = self.pods.pop(key, None) if facts is None else self.pods.get(key)
        if facts is not None:
            self.pods[key] = facts
        if old == facts:
            return
        touched = {(old[0], r) for r, _ in old[1]} if old and old[0] else set()
        touched |= {(facts[0], r) for r, _ in facts[1]} if facts and facts[0] else set()
        add_held(self.held, old, -1)
        add_held(self.held, facts)
        for node, resource in touched:
            self._held_changed(node, resource)

    def replace_nodes(self, nodes: dict[str, NodeFacts]) -> None:
        """After a full list: take it whole, adjusting the counts by what differs."""
        old, self.nodes = self.nodes, nodes
        for name in old.keys() | nodes.keys():
            facts = nodes.get(name)
            if old.get(name) != facts:
                self._node_changed(name, facts)

    def replace_pods(self, pods: dict[str, PodFacts], held: dict[tuple[str, str], int] | None = None) -> None:
        """After a full list (``held``: its sums, if the caller added them up while reading it)."""
        if held is None:
            held = {}
            for facts in pods.values():
                add_held(held, facts)
        old, self.pods, self.held = self.held, pods, held
        for key in old.keys() | held.keys():
            if old.get(key) != held.get(key):
                self._held_changed(*key)

    def availability(self, catalog: Catalog) -> dict[str, GpuAvailability]:
        if self._tallies is None or self._tallies.gpu_classes != catalog.gpu_classes:
            self._tallies = _Tallies(catalog.gpu_classes, self.nodes, self.held)
            self._memo = None
        if self._memo is None:
            self._memo = self._tallies.result()
        return dict(self._memo)

    def _node_changed(self, name: str, facts: NodeFacts | None) -> None:
        if self._tallies is not None:
            self._tallies.node(name, facts, self.held)
            self._memo = None

    def _held_changed(self, node: str, resource: str) -> None:
        if self._tallies is not None:
            self._tallies.held(node, resource, self.held.get((node, resource), 0))
            self._memo = None
