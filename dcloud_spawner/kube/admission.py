"""Capacity admission: whether a plan's GPUs fit the cluster now, before any pod is asked for.

The hub's watch counts GPUs on pods that are on a node. A server let through here is not
counted there until its pod is placed, so a burst of spawns would all see the same free GPUs:
the ledger of *starting* servers holds each admitted server's GPUs until the watch shows
its pod on a node (or its start fails), and the free count is taken net of it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..core.catalog import Catalog, Queueing
from ..core.errors import CapacityRefusal
from ..core.plan import Plan
from ..core.refusals import too_many_waiting
from ..hub.state import hub_state
from .watch import ClusterWatch

Key = tuple[str, str]  # (user, server), as the quota ledger keys a server


class Starting(NamedTuple):
    """A server's GPUs between the capacity check and its pod's appearance on a node."""

    pod: str  # namespace/name, as the hub's pod watch keys it
    gpu: str  # the GPU class id
    count: int


class StartingServers(dict[Key, Starting]):
    """(user, server) -> the GPUs of each server let through the capacity check whose pod
    the hub's watch does not yet show on a node (so the free counts do not include it)."""


class QueuedServers(dict[Key, float]):
    """(user, server) -> when it began to wait, for every server of this hub waiting in line."""


def starting_servers() -> StartingServers:
    return hub_state().part(StartingServers, StartingServers)


def queued_servers() -> QueuedServers:
    return hub_state().part(QueuedServers, QueuedServers)


def start_timeout(base: float, plan: Plan, queueing: Queueing) -> float:
    """The spawn's timeout: the configured one, plus the longest this plan may wait in line."""
    if not queueing.enabled:
        return base
    return base + (queueing.max_wait if plan.wait else queueing.refuse_after)


def starting_elsewhere(live_data: ClusterWatch, gpu_id: str, key: Key) -> int:
    """GPUs of ``gpu_id`` going to servers other than ``key`` starting now; forgets those the
    watch already counts (their pod is on a node), so none is counted twice."""
    starting = starting_servers()
    total = 0
    for other, entry in list(starting.items()):
        facts = live_data.live.pods.get(entry.pod)
        if facts is not None and facts[0]:
            del starting[other]
        elif entry.gpu == gpu_id and other != key:
            total += entry.count
    return total


def admit(plan: Plan, catalog: Catalog, live_data: ClusterWatch | None, key: Key, pod: str) -> Starting | None:
    """The GPUs to hold as starting when ``plan`` fits now; None when there is nothing to hold
    or nothing to go by (no GPU, no watch, numbers from before an outage: the scheduler
    decides). Raises CapacityRefusal when it cannot fit, unless it may wait in line."""
    if plan.gpu is None or live_data is None or live_data.stale_since is not None:
        return None
    live = live_data.availability(catalog)
    if not live or plan.gpu.id not in live:
        return None
    gpu = live[plan.gpu.id]
    starting = starting_elsewhere(live_data, plan.gpu.id, key)
    fits = gpu.total >= plan.gpu_count and gpu.largest_free_block >= plan.gpu_count \
        and gpu.free - starting >= plan.gpu_count
    if fits:
        return Starting(pod, plan.gpu.id, plan.gpu_count)
    # fewer than asked exist at all: refused even with 'wait', which could never end
    if gpu.total < plan.gpu_count or not (catalog.queueing.enabled and plan.wait):
        detail = f"{gpu.free} of {gpu.total} free, at most {gpu.largest_free_block} on one node"
        if starting:
            detail = f"{gpu.free} of {gpu.total} free, {starting} of them going to servers starting now"
        raise CapacityRefusal.short_of_gpus(plan.gpu.display_name, plan.gpu_count, gpu.total, detail,
                                            where="node")
    waiting = [other for other in queued_servers() if other[0] == key[0] and other != key]
    if len(waiting) >= catalog.queueing.max_queued_per_user:
        raise too_many_waiting(len(waiting), catalog.queueing.max_queued_per_user)
    return None
