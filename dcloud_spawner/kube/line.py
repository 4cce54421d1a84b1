"""Waiting in Kueue's line: one spawn's place, told as it moves, and when waiting ends.

A queued pod is created with Kueue's scheduling gate; Kueue lifts the gate when it admits
the pod's Workload. Until then :class:`InLine` asks the visibility API for the place in line
every ``queue_poll_seconds``, and refuses the spawn when the catalog's ``max_wait`` passes
(``refuse_after`` without 'wait').
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core import refusals
from ..core.catalog import duration_words
from ..core.errors import Refusal
from ..core.plan import Plan
from ..core.quantity import format_memory
from ..core.queueing import ADMISSION_GATE, Queue, ordinal
from ..hub.state import hub_state
from .admission import queued_servers
from .queue import hold_reason, position

if TYPE_CHECKING:
    from .spawner import DCloudSpawner


def waiting_for(plan: Plan) -> str:
    if plan.gpu is None:
        return f"{plan.cpu_limit:g} CPU and {format_memory(plan.memory_limit)}"
    return f"{plan.gpu_count} × {plan.gpu.display_name}"


class InLine:
    """One spawn's wait in Kueue's line: its place, told through ``say`` as it moves; the
    refusal when the catalog's ``max_wait`` passes (or, without 'wait', ``refuse_after``)."""

    def __init__(self, spawner: DCloudSpawner, plan: Plan, queue: Queue, say: Callable[..., None]) -> None:
        self.spawner = spawner
        self.plan = plan
        self.queue = queue
        self.say = say
        self.queueing = spawner.catalog.queueing
        self.key = spawner.claim_key
        self.since: float | None = None  # monotonic time the pod began to wait
        self.gated = False
        self.place: tuple[int, int] | None = None
        self.said: str | None = None
        self.next_ask = 0.0
        self.admitted = False

    async def check(self, pod: dict | None) -> Refusal | None:
        gates = [g.get("name") for g in ((pod or {}).get("spec") or {}).get("schedulingGates") or []]
        self.gated = pod is not None and ADMISSION_GATE in gates
        now = time.monotonic()
        if not self.gated:
            if pod is not None:
                self.started()
            return None
        if self.since is None:
            self.since = now
            waiting = [k for k in queued_servers() if k[0] == self.key[0]]
            if self.plan.wait and len(waiting) >= self.queueing.max_queued_per_user:
                return refusals.too_many_waiting(len(waiting), self.queueing.max_queued_per_user)
            queued_servers()[self.key] = time.time()
            self.say(f"Joined the line of {self.queue.who} for {waiting_for(self.plan)}")
        if now >= self.next_ask:
            await self._ask_place(now)
        limit = self.queueing.max_wait if self.plan.wait else self.queueing.refuse_after
        if now - self.since < limit:
            return None
        self.leave("expired" if self.plan.wait else "refused")
        return self.refusal()

    async def _ask_place(self, now: float) -> None:
        spawner = self.spawner
        self.next_ask = now + spawner.queue_poll_seconds
        found = await position(spawner.api.api_client, spawner.namespace, self.queue.name, spawner.pod_name)
        if found is not None:
            self.place = found
            sentence = self.sentence()
            if sentence != self.said:
                self.said = sentence
                self.say(sentence)

    def started(self) -> None:
        """Say once that the queue let the pod through: at once, or after how long it waited."""
        if self.admitted:
            return
        self.admitted = True
        if self.since is None:
            self.say(f"Admitted at once by the queue of {self.queue.who}", 10)
            return
        waited = time.monotonic() - self.since
        self.leave("admitted")
        self.say(f"Admitted by the queue after {duration_words(max(1, waited))}; starting", 10)

    def sentence(self) -> str:
        place = f"{ordinal(self.place[0])} in line" if self.place else "in line"
        use = ""
        live = self.spawner.live_data()
        numbers = live.availability(self.spawner.catalog) if live and self.plan.gpu else None
        if numbers and self.plan.gpu and self.plan.gpu.id in numbers:
            gpu = numbers[self.plan.gpu.id]
            use = f" ({gpu.total - gpu.free} of {gpu.total} in use)"
        return f"Waiting for {waiting_for(self.plan)}: {place} for {self.queue.who}{use}"

    def refusal(self) -> Refusal:
        place = self.place[0] if self.place else None
        if self.plan.wait:
            return refusals.queue_timeout(self.plan, self.queueing.max_wait, place)
        view = self.spawner.kueue_view()
        why = hold_reason(view.workload_of(self.spawner.pod_name)) if view else ""
        return refusals.queue_full(self.plan, self.queue.who, why, self.queueing.max_wait)

    def leave(self, outcome: str = "left") -> None:
        """Out of the line (admitted, refused, or the user stopped): forget it, time the wait."""
        began = queued_servers().pop(self.key, None)
        if began is not None and self.since is not None:
            hub_state().metrics.queue_waited(outcome, time.monotonic() - self.since)
