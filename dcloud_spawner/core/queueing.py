"""Waiting in line for GPUs: which queues the catalog's quotas make, and which one a server joins.

Pure. Kueue (sigs.k8s.io/kueue) does the queueing and the fair sharing; DCloud only says
what the queues are and puts each notebook pod in one (``kube/kueue_objects.py`` writes
them as Kueue's objects):

- one ClusterQueue per group with a quota in ``quotas.groups``, whose nominal quota is the
  group's share (``max_gpus_per_class``, else ``max_gpus``, per class; ``max_cpu``,
  ``max_memory``) and which may not borrow beyond it; and one, ``<cohort>-everyone``, for
  everyone else, with no quota of its own and no borrowing limit;
- a Cohort holding what the groups' shares leave of the cluster's capacity; every queue is in
  it, so an idle group's GPUs are lent to the others;
- one LocalQueue per ClusterQueue in the notebook namespace, named like it; one ResourceFlavor
  per GPU class, and one for CPU and memory.

A group's quota is therefore enforced cluster-wide by Kueue, for batch jobs in its queue too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, GpuClass, Totals
from .quantity import format_memory

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
EVERYONE = "everyone"
# Not a limit DCloud sets: the scheduler places CPU and memory by node capacity. Kueue needs
# some quota for every resource a pod asks for, so the cohort's pool is this when unset.
UNLIMITED_CPU = 100_000
UNLIMITED_MEMORY = 1024**5  # 1 PiB


def slug(name: str) -> str:
    """A group name as part of a Kubernetes object name; a hash keeps altered names distinct."""
    part = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")
    if part != name:
        part = f"{part or 'group'}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return part


@dataclass(frozen=True)
class Queue:
    """One ClusterQueue (and the LocalQueue of the same name): a group's, or everyone's."""

    name: str
    group: str | None  # None: the queue of users whose groups have no quota
    quota: Totals | None
    classes: frozenset[str] = frozenset()  # GPU classes the group's policy allows (its share of others is 0)

    @property
    def who(self) -> str:
        return f"group {self.group}" if self.group else "everyone"

    @property
    def whose(self) -> str:
        return f"the share of group {self.group}" if self.group else "everyone's share"

    def gpu_share(self, gpu: GpuClass) -> int | None:
        """The group's GPUs of ``gpu``'s class; None when not limited."""
        if self.quota is None:
            return None
        if gpu.id not in self.classes:
            return 0
        per_class = self.quota.max_gpus_per_class.get(gpu.id)
        caps = [c for c in (per_class, self.quota.max_gpus) if c is not None]
        return min(caps) if caps else None


def queues(catalog: Catalog) -> list[Queue]:
    cohort = catalog.queueing.cohort
    every = [g.id for g in catalog.gpu_classes]

    def allowed(group: str) -> frozenset[str]:
        policy = catalog.policies.groups.get(group)
        choice = policy.gpu_classes if policy is not None else []
        return frozenset(every if choice == "*" else choice)

    named = [Queue(f"{cohort}-{slug(group)}", group, totals, allowed(group))
             for group, totals in catalog.quotas.groups.items()]
    return [*named, Queue(f"{cohort}-{EVERYONE}", None, None, frozenset(every))]


def queue_for(catalog: Catalog, groups: Iterable[str], gpu: GpuClass | None) -> Queue:
    """The queue a server joins: of the user's groups that may use ``gpu`` (any, for a CPU
    server), the one with the largest share of it; everyone's when one of them has no quota."""
    groups = set(groups)
    allowed = {EVERYONE} if gpu is None or _allows(catalog.policies.everyone.gpu_classes, gpu) else set()
    allowed |= {name for name, policy in catalog.policies.groups.items()
                if name in groups and (gpu is None or _allows(policy.gpu_classes, gpu))}
    if not allowed:  # validation refuses such a request; a CPU server of someone in no group
        allowed = {EVERYONE}
    by_group = {q.group: q for q in queues(catalog)}
    everyone = by_group[None]
    candidates = [by_group[g] for g in sorted(allowed) if g in by_group]
    if any(g not in by_group for g in allowed):
        return everyone  # a group (or everyone's policy) with no quota: no limit beats any
    if gpu is None:
        return max(candidates, key=lambda q: (q.quota.max_cpu or float("inf"), q.name)) \
            if candidates else everyone
    return max(candidates, key=lambda q: (q.gpu_share(gpu) if q.gpu_share(gpu) is not None
                                          else float("inf"), q.name))


def _allows(choice: Any, gpu: GpuClass) -> bool:
    return choice == "*" or gpu.id in choice


@dataclass(frozen=True)
class Shares:
    """What the ``kueue`` command needs beyond the catalog: the cluster's size."""

    gpus: Mapping[str, int]  # GPU class id -> GPUs in the cluster
    cpu: float
    memory: int


def capacity(catalog: Catalog, measured: Mapping[str, int] | None = None,
             given: Mapping[str, int] | None = None) -> Shares:
    """The cluster's capacity per GPU class: ``given`` (the admin's command line), else the
    catalog's ``queueing.capacity``, else ``measured`` (counted on the cluster's nodes).
    Raises ValueError naming a class whose size is unknown."""
    gpus: dict[str, int] = {}
    for gpu in catalog.gpu_classes:
        known = (given or {}).get(gpu.id, catalog.queueing.capacity.get(gpu.id, (measured or {}).get(gpu.id)))
        if known is None:
            raise ValueError(f"the number of {gpu.id} GPUs in the cluster is unknown: set "
                             f"queueing.capacity.{gpu.id} in the catalog, or pass --capacity {gpu.id}=N "
                             "or --from-cluster")
        gpus[gpu.id] = known
    q = catalog.queueing
    return Shares(gpus, q.cpu_capacity or UNLIMITED_CPU, q.memory_capacity or UNLIMITED_MEMORY)


def describe(catalog: Catalog, shares: Shares | None = None) -> list[str]:
    """What ``dcloud check`` says the quotas become, one line each."""
    q = catalog.queueing
    if not q.enabled:
        return ["queueing is off: full GPU classes refuse a spawn; quotas.groups are enforced by the hub"]
    lines = [f"queueing on Kueue: users may wait up to {q.wait_words()} in line "
             f"(at most {q.max_queued_per_user} waiting server(s) each); cohort '{q.cohort}'; "
             + ("groups reclaim their share by preempting borrowers" if q.preemption
                else "no notebook is ever preempted")]
    for queue in queues(catalog):
        if queue.quota is None:
            lines.append(f"ClusterQueue {queue.name}: users whose groups have no quota; borrows from the cohort")
            continue
        parts = []
        for gpu in catalog.gpu_classes:
            own = queue.gpu_share(gpu)
            if own is not None and gpu.id in queue.classes:
                parts.append(f"{own} {gpu.id}")
        if queue.quota.max_cpu is not None:
            parts.append(f"{queue.quota.max_cpu:g} CPU")
        if queue.quota.max_memory is not None:
            parts.append(format_memory(queue.quota.max_memory))
        lines.append(f"ClusterQueue {queue.name}: {queue.whose} is {', '.join(parts) or 'nothing'}, "
                     "lent to others while idle, never exceeded")
        if queue.quota.max_gpus is not None and len(queue.classes) > 1:
            lines.append(f"  note: max_gpus {queue.quota.max_gpus} of {queue.who} applies to each GPU class "
                         "separately in Kueue, not to their sum")
    if shares is not None:
        for gpu in catalog.gpu_classes:
            given = sum(s for queue in queues(catalog) if (s := queue.gpu_share(gpu)) is not None)
            if given > shares.gpus[gpu.id]:
                lines.append(f"warning: the groups' shares of {gpu.id} add up to {given}, more than the "
                             f"{shares.gpus[gpu.id]} in the cluster; Kueue may admit servers no node can hold")
    return lines


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
