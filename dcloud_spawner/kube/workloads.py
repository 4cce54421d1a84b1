"""Reading Kueue's Workloads: which GPU class and how many GPUs each asks for, and its state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.catalog import Catalog, GpuClass
from .facts import pod_request
from .kueue_objects import flavor_name


def workload_class(catalog: Catalog, workload: Mapping[str, Any]) -> tuple[str | None, int]:
    """The GPU class and GPU count a Workload asks for (None, 0 for a CPU workload).

    An admitted workload names its flavor; a pending one is matched by resource name and
    node selector (a batch job that only asks for the resource matches the one class of it).
    """
    spec = workload.get("spec") or {}
    assigned: dict[str, str] = {}
    for assignment in ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []:
        assigned.update(assignment.get("flavors") or {})
    by_flavor = {flavor_name(catalog, g): g for g in catalog.gpu_classes}
    count_total = 0
    found: str | None = None
    for pod_set in spec.get("podSets") or []:
        template = pod_set.get("template") or {}
        pod_spec = template.get("spec") or {}
        count = int(pod_set.get("count") or 1)
        for gpu_resource in {g.resource for g in catalog.gpu_classes}:
            per_pod = int(pod_request(template, gpu_resource))
            if not per_pod:
                continue
            gpu = by_flavor.get(assigned.get(gpu_resource, "")) or _match(catalog, gpu_resource, pod_spec)
            if gpu is not None:
                found = found or gpu.id
                count_total += per_pod * count
    return found, count_total


def _match(catalog: Catalog, resource: str, pod_spec: Mapping[str, Any]) -> GpuClass | None:
    selector = pod_spec.get("nodeSelector") or {}
    classes = [g for g in catalog.gpu_classes if g.resource == resource]
    matching = [g for g in classes if g.node_selector and
                all(selector.get(k) == v for k, v in g.node_selector.items())]
    if len(matching) == 1:
        return matching[0]
    return classes[0] if len(classes) == 1 else None


def admitted(workload: Mapping[str, Any]) -> bool:
    return bool((workload.get("status") or {}).get("admission"))


def finished(workload: Mapping[str, Any]) -> bool:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Finished" and c.get("status") == "True" for c in conditions)
