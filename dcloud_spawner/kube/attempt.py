"""One start of one server: what it holds and what it watches, in one object.

A :class:`StartAttempt` begins at the capacity check (JupyterHub's ``apply_user_options``)
and is renewed by ``start()``; the spawner keeps only the current one. It holds:

- ``gpus``: the GPUs admitted by the capacity check, for the ledger of starting servers;
- ``messages``: DCloud's lines for the progress page (the place in line), merged with
  KubeSpawner's events by :func:`merged_progress`;
- ``line``: the wait in Kueue's line, while the pod is queued.

While KubeSpawner creates the pod and waits for it, :meth:`StartAttempt.doomed` watches for
the moment it cannot start, and returns the refusal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..core import refusals
from ..core.errors import Refusal
from ..core.plan import Plan
from .admission import Starting
from .claims import PendingClaims, about_volumes, claim_not_made_yet
from .failures import explain_unschedulable, package_failure, packages_outcome
from .line import InLine
from .pod import PACKAGE_INSTALLER

if TYPE_CHECKING:
    from .spawner import DCloudSpawner

Event = dict[str, Any]


class StartAttempt:
    """What one start needs between the capacity check and its end."""

    def __init__(self, gpus: Starting | None = None) -> None:
        self.gpus = gpus  # held in the ledger of starting servers until the pod is on a node
        self.messages: asyncio.Queue[Event] = asyncio.Queue()
        self.line: InLine | None = None  # the wait in Kueue's line, if the pod is queued
        self._packages_told = False
        self._pod: Callable[[], dict | None] | None = None  # the pod as the watch shows it, once doomed() runs
        self._plan: Plan | None = None

    def say(self, message: str, progress: int = 5) -> None:
        """A line for the progress page, besides KubeSpawner's events (e.g. the place in line)."""
        self.messages.put_nowait({"progress": progress, "message": message})

    def started(self) -> None:
        """The pod is Running before the watch's next look: still tell how long it waited, and
        what the package installer did (it may have ended in the same status as the pod ran)."""
        if self._pod is not None:
            self._tell_packages(self._pod())
        if self.line is not None:
            self.line.started()

    def _tell_packages(self, pod: dict | None) -> None:
        outcome = packages_outcome(pod, self._plan) if not self._packages_told else None
        if outcome is not None:
            self.say(outcome, 50)
            self._packages_told = True

    async def doomed(self, spawner: DCloudSpawner, plan: Plan | None) -> Refusal:
        """Wait until the pod cannot start: the scheduler has reported it unplaceable for the
        grace time, a claim of its home or scratch stayed Pending for the volumes' grace time,
        the package init container failed, or it waited in Kueue's line too long."""
        queue = spawner.dcloud_queue(plan) if plan else None
        line = self.line = InLine(spawner, plan, queue, self.say) if plan and queue else None
        volumes = PendingClaims(spawner, spawner.volume_pending_grace_seconds)
        first_seen: float | None = None

        def look() -> dict | None:
            return spawner.pod_reflector.pods.get(f"{spawner.namespace}/{spawner.pod_name}") \
                if spawner.pod_reflector else None

        self._pod, self._plan = look, plan
        try:
            while True:
                await asyncio.sleep(0.25)
                pod = look()
                failure = package_failure(pod, plan)
                if failure is not None:
                    return refusals.packages_failed(failure)
                self._tell_packages(pod)
                if line is not None:
                    refusal = await line.check(pod)
                    if refusal is not None:
                        return refusal
                    if line.gated:
                        continue
                refusal = await volumes.check(pod)
                if refusal is not None:
                    return refusal
                verdict = unschedulable(spawner, pod, first_seen, plan, volumes.waiting)
                if isinstance(verdict, Refusal):
                    return verdict
                first_seen = verdict
        finally:
            if line is not None:
                line.leave()


def unschedulable(spawner: DCloudSpawner, pod: dict | None, first_seen: float | None,
                  plan: Plan | None, volumes_pending: bool = False) -> float | Refusal | None:
    """The scheduler's verdict: when it first said the pod fits nowhere, or the refusal once
    it has said so for the spawner's ``unschedulable_grace_seconds``. While one of the pod's own
    claims is Pending on its provisioner (``volumes_pending``), its words about unbound volumes
    are no verdict: the volumes' longer grace time decides. A WaitForFirstConsumer claim that
    waits for the scheduler to choose a node is not: this verdict decides (see claims.py). Nor is
    a scratch claim the ephemeral volume controller has not made yet (its words stay the last
    event while the volume is provisioned after it)."""
    if not spawner.events_enabled or spawner.event_reflector is None:
        return first_seen
    if pod and (pod.get("spec") or {}).get("nodeName"):
        return None  # placed after all
    failed = [e for e in spawner.events if e.get("reason") == "FailedScheduling"]
    said = (failed[-1].get("message") or "") if failed else ""
    if not failed or (volumes_pending and about_volumes(said)) or claim_not_made_yet(said):
        return first_seen
    first_seen = first_seen or time.monotonic()
    if time.monotonic() - first_seen >= spawner.unschedulable_grace_seconds:
        return explain_unschedulable(failed[-1].get("message") or "", plan)
    return first_seen


async def merged_progress(upstream: AsyncIterator[Event], messages: Callable[[], asyncio.Queue[Event]],
                          plan: Plan | None) -> AsyncIterator[Event]:
    """KubeSpawner's events, DCloud's lines as they are said (``messages()``: the current
    attempt's), and a line of DCloud's words when the package installer starts."""
    if plan is not None:
        yield {"progress": 1, "message": f"Requested {plan.summary()}"}
    upstream = upstream.__aiter__()
    next_event = asyncio.ensure_future(upstream.__anext__())
    next_message = asyncio.ensure_future(messages().get())
    try:
        while True:
            done, _ = await asyncio.wait({next_event, next_message}, return_when=asyncio.FIRST_COMPLETED)
            if next_message in done:
                yield next_message.result()
                next_message = asyncio.ensure_future(messages().get())
            if next_event not in done:
                continue
            try:
                event = next_event.result()
            except StopAsyncIteration:
                break
            next_event = asyncio.ensure_future(upstream.__anext__())
            yield event
            if plan is not None and plan.packages and _package_installer_started(event):
                yield {"progress": event.get("progress", 50),
                       "message": f"Installing extra packages: {', '.join(plan.packages)}"}
    finally:
        next_message.cancel()
        next_event.cancel()


def _package_installer_started(event: Event) -> bool:
    raw = event.get("raw_event") or {}
    about = (raw.get("involvedObject") or raw.get("involved_object") or {}).get("fieldPath") or ""
    return raw.get("reason") == "Started" and about == f"spec.initContainers{{{PACKAGE_INSTALLER}}}"
