"""GPU availability: free and total GPUs per class, computed from Node and Pod objects.

Free GPUs of a class = allocatable on the Ready, schedulable nodes of that class minus
what non-terminated pods on them request. Pure: the Kubernetes backend feeds it from its
watch caches (``kube/watch.py``); the form, the admin page and the metrics show it.
"""

from __future__ import annotations

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


