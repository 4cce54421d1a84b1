"""The Kueue objects that make the catalog's group quotas real, and Kueue's API names.

Pure: data in, objects out (``dcloud kueue`` prints them; the admin applies them). Which
queues there are and each one's share are the core's rules (``core/queueing.py``); this
module writes them as Kueue's objects:

- one ResourceFlavor per GPU class (its node labels and tolerations), and one for CPU and
  memory, which any node serves;
- a Cohort holding what the groups' shares leave of the cluster's capacity;
- one ClusterQueue per queue, in the cohort, whose nominal quota is the group's share and
  which may not borrow beyond it (everyone's has no quota of its own and borrows freely);
- one LocalQueue per ClusterQueue in the notebook namespace, named like it.
"""

from __future__ import annotations

from typing import Any

from ..core.catalog import Catalog, GpuClass
from ..core.quantity import format_memory
from ..core.queueing import EVERYONE, Queue, Shares, queues, slug

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
KUEUE_API = f"{GROUP}/{VERSION}"  # the apiVersion of its objects
# Kueue serves its visibility API (where a workload is in line) at the version of its objects.
VISIBILITY_API = f"visibility.{GROUP}/{VERSION}"


def flavor_name(catalog: Catalog, gpu: GpuClass | None) -> str:
    """The ResourceFlavor of a GPU class (None: the one of CPU and memory)."""
    return f"{catalog.queueing.cohort}-{gpu.id if gpu else 'cpu'}"


EPHEMERAL = "ephemeral-storage"
# Kueue admits a workload only if its queue covers every resource it requests. Notebooks ask
# for ephemeral-storage where the catalog sets it; the queues cover it without rationing it
# (this much in the cohort, every queue borrowing freely): node disk is the kubelet's to
# enforce, per pod, and scratch quotas are the hub's (core/quotas.py), with or without Kueue.
EPHEMERAL_POOL = 1024**5


def _plain_resources(catalog: Catalog) -> tuple[str, ...]:
    if catalog.storage.ephemeral is not None or catalog.storage.scratch is not None:
        return ("cpu", "memory", EPHEMERAL)
    return ("cpu", "memory")


def _resource_groups(catalog: Catalog, amount: Any) -> list[dict[str, Any]]:
    """Kueue resource groups: CPU and memory (and ephemeral-storage) in one, each GPU resource
    name in its own, every class of that resource a flavor. ``amount(gpu_or_None, resource)``
    gives each quota."""
    plain = _plain_resources(catalog)
    groups = [{
        "coveredResources": list(plain),
        "flavors": [{"name": flavor_name(catalog, None), "resources": [
            {"name": r, **amount(None, r)} for r in plain]}],
    }]
    by_resource: dict[str, list[GpuClass]] = {}
    for gpu in catalog.gpu_classes:
        by_resource.setdefault(gpu.resource, []).append(gpu)
    for resource, classes in by_resource.items():
        groups.append({
            "coveredResources": [resource],
            "flavors": [{"name": flavor_name(catalog, g), "resources": [{"name": resource, **amount(g, resource)}]}
                        for g in classes],
        })
    return groups


def _quantity(resource: str, value: float) -> str | int:
    if resource in ("memory", EPHEMERAL):
        return format_memory(int(value))
    if resource == "cpu":
        return f"{value:g}"
    return int(value)


def kueue_objects(catalog: Catalog, namespace: str, shares: Shares) -> list[dict[str, Any]]:
    """The Kueue objects that make the catalog's group quotas real (see the module's doc)."""
    q = catalog.queueing
    labels = {"app.kubernetes.io/managed-by": "dcloud"}
    flavors: list[dict[str, Any]] = [{
        "apiVersion": KUEUE_API, "kind": "ResourceFlavor",
        "metadata": {"name": flavor_name(catalog, None), "labels": labels}, "spec": {},
    }]
    for gpu in catalog.gpu_classes:
        spec: dict[str, Any] = {}
        if gpu.node_selector:
            spec["nodeLabels"] = dict(gpu.node_selector)
        if gpu.tolerations:
            spec["tolerations"] = [t.manifest() for t in gpu.tolerations]
        flavors.append({"apiVersion": KUEUE_API, "kind": "ResourceFlavor",
                        "metadata": {"name": flavor_name(catalog, gpu), "labels": labels}, "spec": spec})

    all_queues = queues(catalog)

    def share(queue: Queue, gpu: GpuClass | None, resource: str) -> float | None:
        if queue.quota is None:
            return None
        if gpu is not None:
            return queue.gpu_share(gpu)
        if resource == EPHEMERAL:
            return None  # not rationed by the queue (see EPHEMERAL_POOL)
        return queue.quota.max_cpu if resource == "cpu" else queue.quota.max_memory

    def whole(gpu: GpuClass | None, resource: str) -> float:
        if gpu is not None:
            return shares.gpus[gpu.id]
        if resource == EPHEMERAL:
            return EPHEMERAL_POOL
        return shares.cpu if resource == "cpu" else shares.memory

    def pool(gpu: GpuClass | None, resource: str) -> dict[str, Any]:
        given = sum(s for queue in all_queues if (s := share(queue, gpu, resource)) is not None)
        return {"nominalQuota": _quantity(resource, max(0, whole(gpu, resource) - given))}

    cohort = {"apiVersion": KUEUE_API, "kind": "Cohort", "metadata": {"name": q.cohort, "labels": labels},
              "spec": {"resourceGroups": _resource_groups(catalog, pool)}}
    objects: list[dict[str, Any]] = [*flavors, cohort]
    for queue in all_queues:
        def amount(gpu: GpuClass | None, resource: str, queue: Queue = queue) -> dict[str, Any]:
            own = share(queue, gpu, resource)
            if own is None:  # no quota: borrow freely from the cohort
                return {"nominalQuota": _quantity(resource, 0)}
            return {"nominalQuota": _quantity(resource, own), "borrowingLimit": _quantity(resource, 0)}

        spec = {
            "cohortName": q.cohort,
            "namespaceSelector": {},  # batch jobs of the group's other namespaces share the quota
            "queueingStrategy": q.strategy,
            "resourceGroups": _resource_groups(catalog, amount),
            "preemption": ({"reclaimWithinCohort": "Any", "withinClusterQueue": "Never",
                            "borrowWithinCohort": {"policy": "Never"}} if q.preemption else
                           {"reclaimWithinCohort": "Never", "withinClusterQueue": "Never",
                            "borrowWithinCohort": {"policy": "Never"}}),
        }
        group_label = {"dcloud.io/group": slug(queue.group or EVERYONE)}
        objects.append({"apiVersion": KUEUE_API, "kind": "ClusterQueue",
                        "metadata": {"name": queue.name, "labels": {**labels, **group_label}}, "spec": spec})
        objects.append({"apiVersion": KUEUE_API, "kind": "LocalQueue",
                        "metadata": {"name": queue.name, "namespace": namespace, "labels": labels},
                        "spec": {"clusterQueue": queue.name}})
    return objects


