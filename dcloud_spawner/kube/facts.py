"""What GPU availability reads of Kubernetes Nodes and Pods: their lean facts.

The watches (``watch.py``) turn each Node into a :class:`NodeFacts` and each Pod into
:data:`PodFacts` as it arrives; the rules over those facts (which node serves a GPU class, how
many GPUs are free) are the core's, in ``core/availability.py``. :func:`compute` does the whole
way at once, from lists of objects (``dcloud kueue --from-cluster``, the tests, the benchmarks).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from ..core.availability import Amounts, GpuAvailability, NodeFacts, PodFacts, count
from ..core.catalog import Catalog
from ..core.quantity import parse_quantity


def _amount(value: Any) -> Decimal:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return Decimal(value)  # the usual GPU count: skip the general quantity parser
    try:
        return parse_quantity(value)
    except ValueError:
        return Decimal(0)


def pod_request(pod: Mapping[str, Any], resource: str) -> Decimal:
    """What a pod holds of ``resource`` while it runs, by Kubernetes' rule for the effective
    request: the larger of its containers' sum and its largest init container (limits stand
    in for missing requests, as for GPUs). Kueue counts a Workload's pods the same way.

    ``pod`` is a Pod or a pod template (anything with a ``spec``)."""
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


def node_ready(node: Mapping[str, Any]) -> bool:
    """Ready and not cordoned."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


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
        schedulable=node_ready(node),
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


def compute(
    catalog: Catalog, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> dict[str, GpuAvailability]:
    """GPU class id -> free and total GPUs, from whole Node and Pod objects, from scratch."""
    return count(catalog, {node["metadata"]["name"]: node_facts(node) for node in nodes}, map(pod_facts, pods))
