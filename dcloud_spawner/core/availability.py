"""GPU availability: free and total GPUs per class, from plain facts of Nodes and Pods.

Free GPUs of a class = allocatable on the Ready, schedulable nodes of that class minus
what non-terminated pods on them request. Pure: the Kubernetes backend reads the facts off
its Node and Pod objects (``kube/facts.py``) as its watches (``kube/watch.py``) deliver them;
the form, the admin page and the metrics show the result.

Two ways to the same numbers: :func:`count` counts from scratch; :class:`LiveAvailability`
keeps the facts per Node and Pod and adjusts per-node free counts with each change (what the
hub runs, at any cluster size).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, GpuClass


@dataclass(frozen=True)
class GpuAvailability:
    """Free and total GPUs of one class right now."""

    free: int
    total: int
    largest_free_block: int = 0  # most GPUs of this class free on a single node


# What availability needs of a Node, and nothing else: the watches keep one of these per node
# instead of the object (a Node is tens of KiB with its images and conditions).
Amounts = tuple[tuple[str, int], ...]  # (extended resource, amount), sorted
Taint = tuple[Any, Any, str]  # (key, value, effect)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]  # the NoSchedule/NoExecute ones
    allocatable: Amounts  # extended resources only (GPUs, MIG slices)
    schedulable: bool  # Ready and not cordoned


PodFacts = tuple[str, Amounts]  # (node name, or "" while unbound; extended resources held)


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


def tolerates(gpu: GpuClass, taints: Iterable[Taint]) -> bool:
    """Whether the class's tolerations tolerate every one of ``taints``, by Kubernetes' rule."""
    for key, value, effect in taints:
        if not any(
            t.key == key and (t.effect is None or t.effect == effect) and (t.operator == "Exists" or t.value == value)
            for t in gpu.tolerations
        ):
            return False
    return True


def capacity_for(gpu: GpuClass, facts: NodeFacts | None) -> int:
    """How many GPUs of ``gpu``'s class the node offers (0: it does not serve the class)."""
    if facts is None or not facts.schedulable:
        return 0
    capacity = next((n for r, n in facts.allocatable if r == gpu.resource), 0)
    if capacity <= 0 or any(facts.labels.get(k) != v for k, v in gpu.node_selector.items()):
        return 0
    return capacity if tolerates(gpu, facts.taints) else 0


def count(
    catalog: Catalog, nodes: Mapping[str, NodeFacts], pods: Iterable[PodFacts | None]
) -> dict[str, GpuAvailability]:
    """GPU class id -> free and total GPUs now, counted from scratch (node name -> its facts)."""
    held: dict[tuple[str, str], int] = {}
    for facts in pods:
        add_held(held, facts)
    result = {}
    for gpu in catalog.gpu_classes:
        total = free = largest = 0
        for name, facts in nodes.items():
            capacity = capacity_for(gpu, facts)
            if capacity <= 0:
                continue
            available = max(0, capacity - held.get((name, gpu.resource), 0))
            total += capacity
            free += available
            largest = max(largest, available)
        result[gpu.id] = GpuAvailability(free=free, total=total, largest_free_block=largest)
    return result


# -- kept up to date change by change (the hub's watch caches feed this) ----------------------------


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

    Equal, after any sequence of changes, to :func:`count` over the same facts (the tests
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
