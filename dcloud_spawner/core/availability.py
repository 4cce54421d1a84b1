"""Live GPU availability on the cluster, from watch-based caches of Nodes and Pods.

Free GPUs of a class = allocatable on the Ready, schedulable nodes of that class minus
what non-terminated pods on those nodes request. The caches are KubeSpawner reflectors
(one list, then a watch), shared by every spawner in the hub, so rendering the form or
checking a request makes no API request. Without the RBAC to watch Nodes and Pods
cluster-wide, availability is simply unknown: the form works and says nothing about it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity
from kubernetes_asyncio import watch
from kubespawner.clients import shared_client
from kubespawner.reflector import MultiNamespaceResourceReflector
from traitlets import default

from .catalog import Catalog, GpuClass
from .form import GpuAvailability

log = logging.getLogger("dcloud")


class NodeReflector:
    """List, then watch, all Nodes (KubeSpawner's reflector keys objects by namespace,
    which Nodes lack, so this is the same pattern for a cluster-scoped kind)."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        api = shared_client("CoreV1Api")
        version = await self._list(api)
        self._task = asyncio.create_task(self._watch(api, version))

    async def _list(self, api: Any) -> str:
        response = await api.list_node(_preload_content=False)
        data = json.loads(await response.read())
        self.resources = {n["metadata"]["name"]: n for n in data["items"]}
        return data["metadata"]["resourceVersion"]

    async def _watch(self, api: Any, version: str) -> None:
        delay = 1.0
        while True:
            try:
                async with watch.Watch().stream(api.list_node, resource_version=version,
                                                timeout_seconds=300) as stream:
                    async for event in stream:
                        raw = event["raw_object"]
                        if event["type"] == "ERROR":
                            raise RuntimeError(raw.get("message", "watch error"))  # e.g. 410 Gone
                        version = raw["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            self.resources.pop(raw["metadata"]["name"], None)
                        else:
                            self.resources[raw["metadata"]["name"]] = raw
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # start over from a fresh list
                log.warning("DCloud: node watch interrupted (%s); listing again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                try:
                    version = await self._list(api)
                except Exception as list_error:
                    log.warning("DCloud: listing nodes failed: %s", list_error)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


class ClusterPodReflector(MultiNamespaceResourceReflector):
    kind = "pods"
    list_method_name = "list_pod_for_all_namespaces"

    # KubeSpawner's reflector lists everything again whenever a watch ends (by default
    # after 10 s without events). Every pod of the cluster is a large list, and parsing it
    # blocks the hub, so keep each watch open for minutes instead.
    @default("timeout_seconds")
    def _watch_long(self) -> int:
        return 300

    @default("restart_seconds")
    def _restart_rarely(self) -> int:
        return 900

    @default("request_timeout")
    def _request_outlives_watch(self) -> int:
        return 330


def _amount(value: Any) -> Decimal:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return Decimal(value)  # the usual GPU count: skip the general quantity parser
    try:
        return parse_quantity(str(value))
    except (ValueError, TypeError):
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


def compute(catalog: Catalog, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
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


class ClusterWatch:
    """The hub-wide Node and Pod caches; started once, on first use."""

    def __init__(self) -> None:
        self.nodes: NodeReflector | None = None
        self.pods: ClusterPodReflector | None = None
        self.unavailable: str | None = None
        self._retry_at = 0.0
        self._memo: tuple[Any, dict[str, GpuAvailability]] | None = None
        # pod uid -> (resourceVersion, what it holds): a pod is read again only when it changed
        self._holdings: dict[str, tuple[str, PodHolding | None]] = {}
        self._starting: asyncio.Lock | None = None

    async def ensure_started(self) -> bool:
        """True when the caches are loaded; False (once logged) when they cannot be."""
        if self.unavailable is not None:
            if time.monotonic() < self._retry_at:
                return False
            self.unavailable = None  # a transient failure gets another chance
        if self.nodes is not None and self.pods is not None:
            return True
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self.nodes is not None and self.pods is not None:
                return True
            nodes, pods = NodeReflector(), ClusterPodReflector()
            try:
                await asyncio.gather(nodes.start(), pods.start())
            except Exception as exc:
                await asyncio.gather(nodes.stop(), pods.stop(), return_exceptions=True)
                status = getattr(exc, "status", None)
                forbidden = status in (401, 403)
                self.unavailable = (
                    "the hub may not watch Nodes and Pods cluster-wide (apply helm-values/rbac.yaml)"
                    if forbidden else f"watching Nodes and Pods failed: {exc}"
                )
                self._retry_at = time.monotonic() + (3600 if forbidden else 60)
                log.warning("DCloud: GPU availability is hidden from the form: %s", self.unavailable)
                return False
            self.nodes, self.pods = nodes, pods
            return True

    def snapshot(self, catalog: Catalog) -> dict[str, GpuAvailability] | None:
        """Availability now; recomputed only when a cached object changed since last time."""
        if self.nodes is None or self.pods is None:
            return None
        nodes = list(self.nodes.resources.values())
        pods = list(self.pods.resources.values())
        # every change to an object gives it a new resourceVersion: a cheap change detector
        key = (id(catalog), hash(tuple(o["metadata"].get("resourceVersion") for o in nodes)),
               hash(tuple(o["metadata"].get("resourceVersion") for o in pods)))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, compute(catalog, nodes, pods, self._cached_holding(catalog, pods)))
        return dict(self._memo[1])

    def _cached_holding(self, catalog: Catalog, pods: list[dict[str, Any]]) -> Callable[[Any], Any]:
        resources = sorted({g.resource for g in catalog.gpu_classes})
        live = {p["metadata"].get("uid") for p in pods}
        for gone in self._holdings.keys() - live:
            del self._holdings[gone]

        def holding(pod: Mapping[str, Any]) -> PodHolding | None:
            meta = pod["metadata"]
            uid, version = meta.get("uid"), meta.get("resourceVersion")
            cached = self._holdings.get(uid)
            if cached is None or cached[0] != version:
                cached = (version, pod_holding(pod, resources))
                self._holdings[uid] = cached
            return cached[1]

        return holding

    async def stop(self) -> None:
        for reflector in (self.nodes, self.pods):
            if reflector is not None:
                await reflector.stop()
        self.nodes = self.pods = None
        self.unavailable = None
        self._memo = None
        self._holdings = {}


cluster_watch = ClusterWatch()
