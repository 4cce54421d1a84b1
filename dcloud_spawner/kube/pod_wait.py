"""A start returns once the pod watch shows the pod running, not at KubeSpawner's next look.

KubeSpawner's start ends by polling its pod cache for the pod to run, with JupyterHub's
exponential backoff (random sleeps, doubling, capped at 5 s). A pod that runs within a second
is seen promptly; one Kueue admits after a wait in line, or whose image pulls for a minute, is
seen up to 5 s late, and the user waits that long for nothing (``benchmarks/queue_admission.py``).

How: KubeSpawner's pods reflector is a :class:`WakingPodReflector`, its own ``PodReflector``
whose cache wakes whoever waits on one pod when the watch sets or removes it, lists anew, or
the reflector stops. Beside KubeSpawner's start, :func:`_started` waits on that; when the pod
is running (by the spawner's own ``is_pod_running``) while the start sleeps in its final wait,
it cancels that sleeping start and finishes as KubeSpawner does after the wait: ``pod_id``
from the pod, the URL from ``_get_pod_url``. Everything before the wait (the PVC, the pod,
internal_ssl's secret, the service, ``after_pod_created_hook``) has then run, as KubeSpawner
did it. A start anywhere else (a hook, another backoff, the timeout's reflector restart) is
never cut, so its failures and timeouts are KubeSpawner's as before. Cancelling KubeSpawner's
start future is safe: only DCloud's start awaits it, and ``progress()`` ends when it is done,
whichever way.

"Sleeps in its final wait" is read from the start task's await chain: ``_start`` awaits
``exponential_backoff`` whose ``pass_func`` calls ``is_pod_running``, and that backoff awaits
``asyncio.sleep``. That is exact without copying ``_start``, where watching calls would not be
(``poll`` calls ``is_pod_running`` too, and an admin's hook may). Should upstream change its
wait, the chain no longer matches and starts return at upstream's pace again, which
``tests/kube/test_pod_wait.py`` reports.

Set aside: resolving the sleep's future early (private attributes, and a race with the sleep's
own timer, which then raises in the loop); polling the cache faster (still late, and a cost per
waiting server); a copy of ``_start`` (every upstream fix missed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kubespawner.spawner as upstream
from kubespawner.spawner import PodReflector
from traitlets import validate

Pod = dict[str, Any]


class _Announcing(dict):
    """A reflector's cache (pods by key) that calls ``changed(key)`` on each set or removal
    (what KubeSpawner's watch does to it: ``cache[key] = pod``, ``cache.pop(key, None)``)."""

    def __init__(self, items: dict[str, Pod], changed: Callable[[str | None], None]) -> None:
        super().__init__(items)
        self._changed = changed

    def __setitem__(self, key: str, value: Pod) -> None:
        super().__setitem__(key, value)
        self._changed(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed(key)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        value = super().pop(key, *default)
        self._changed(key)
        return value


class WakingPodReflector(PodReflector):
    """KubeSpawner's pods reflector, whose cache also wakes whoever waits on one pod's change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}  # before the cache's first validation
        super().__init__(*args, **kwargs)

    @validate("resources")
    def _announcing(self, proposal: Any) -> _Announcing:
        self._changed(None)  # a new list: every waiter looks again
        return _Announcing(proposal["value"], self._changed)

    def changed(self, key: str) -> asyncio.Future[None]:
        """Done at the next change of the pod ``key`` (or of the whole cache); cancel it to stop waiting."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(future)
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[key]

    def _changed(self, key: str | None) -> None:
        for k in list(self._waiting) if key is None else [key]:
            for future in self._waiting.pop(k, ()):
                if not future.done():
                    future.set_result(None)

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self._changed(None)  # waiters look again, at the reflector that replaced this one


class WakesOnThePodWatch:
    """Mix in before KubeSpawner: its start returns as soon as the pod watch shows the pod running."""

    _pods_watched: asyncio.Event | None = None  # set when this start's pods reflector has loaded

    def start(self) -> asyncio.Future[str]:
        watched = self._pods_watched = asyncio.Event()  # before KubeSpawner's start can load the reflector
        kube_start = super().start()  # type: ignore[misc]  # KubeSpawner keeps it to end progress() with it
        started = asyncio.ensure_future(_started(self, kube_start, watched))
        # however it ends (cancelled even before its first step), KubeSpawner's start ends with it
        started.add_done_callback(lambda _: kube_start.cancel())
        return started

    async def _start_reflector(self, kind: str, reflector_class: Any, replace: bool = False, **kwargs: Any) -> Any:
        if kind == "pods" and reflector_class is PodReflector:  # KubeSpawner's own choice, not a subclass's
            reflector_class = WakingPodReflector
        reflector = await super()._start_reflector(  # type: ignore[misc]
            kind, reflector_class, replace=replace, **kwargs
        )
        if kind == "pods" and self._pods_watched is not None:
            self._pods_watched.set()
        return reflector


async def _started(spawner: Any, start: asyncio.Task[str], watched: asyncio.Event) -> str:
    """``start``'s URL; or, if the pod runs while it sleeps in its final wait, the URL then."""
    pod = await _cut_short(spawner, start, watched)
    if pod is not None:
        await asyncio.wait([start])  # it ends at the sleep it was cancelled in
    if pod is None or not start.cancelled():
        return start.result()
    return _finish(spawner, pod)


async def _cut_short(spawner: Any, start: asyncio.Task[str], watched: asyncio.Event) -> Pod | None:
    """Wait until ``start`` ends (None), or until the pod is running while ``start`` sleeps in
    its final wait: then cancel ``start`` and return the pod it would have seen."""
    loaded = asyncio.ensure_future(watched.wait())
    try:
        await asyncio.wait([start, loaded], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loaded.cancel()
    while not start.done():
        reflector = spawner.pod_reflector
        if not isinstance(reflector, WakingPodReflector):  # another spawner class made it: upstream's pace
            await asyncio.wait([start])
            return None
        key = f"{spawner.namespace}/{spawner.pod_name}"
        pod = reflector.pods.get(key)
        if _running(spawner, pod) and asleep_in_pod_wait(start):
            start.cancel()  # in this same step as the look, so the pod is the one KubeSpawner would see
            return pod
        change = reflector.changed(key)
        try:
            await asyncio.wait([start, change], return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
    return None


def _running(spawner: Any, pod: Pod | None) -> bool:
    if pod is None:
        return False
    try:
        return bool(spawner.is_pod_running(pod))
    except Exception:  # a pod it cannot read: KubeSpawner's own next look raises, as before
        return False


def asleep_in_pod_wait(start: asyncio.Task[Any]) -> bool:
    """Whether KubeSpawner's ``_start`` is asleep in its final wait: suspended in the
    ``exponential_backoff`` that polls ``is_pod_running``, inside that backoff's sleep."""
    backoff = getattr(start.get_coro(), "cr_await", None) if isinstance(start, asyncio.Task) else None
    if getattr(backoff, "cr_code", None) is not upstream.exponential_backoff.__code__:
        return False
    if getattr(backoff.cr_await, "cr_code", None) is not asyncio.sleep.__code__:  # type: ignore[union-attr]
        return False
    pass_func = backoff.cr_frame.f_locals.get("pass_func")  # type: ignore[union-attr]
    return "is_pod_running" in getattr(getattr(pass_func, "__code__", None), "co_names", ())


def _finish(spawner: Any, pod: Pod) -> str:
    """What KubeSpawner's start does once its wait has seen the pod running."""
    spawner.pod_id = pod["metadata"]["uid"]
    if spawner.event_reflector:
        spawner.log.debug(
            "pod %s/%s events before launch: %s",
            spawner.namespace,
            spawner.pod_name,
            "; ".join(f"[{e.get('type')}] {e.get('message')}" for e in spawner.events),
        )
    spawner.log.info(
        "DCloud: pod %s/%s is running (seen on the watch, before KubeSpawner's next look)",
        spawner.namespace,
        spawner.pod_name,
    )
    return spawner._get_pod_url(pod)
