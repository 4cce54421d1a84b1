"""The hub-wide watches of Nodes and Pods behind live GPU availability.

Each watch lists its kind once (in pages), then follows changes, the way Kubernetes'
own controllers do, and keeps per object only what availability reads (``NodeFacts``,
``PodFacts``), in one :class:`~dcloud_spawner.core.availability.LiveAvailability` that
adjusts the free counts with each change. So rendering the form or checking a request
makes no API request and costs the same with 50 pods or 50,000, and the hub's memory does
not hold the cluster's pods. Without the RBAC to watch Nodes and Pods cluster-wide,
availability is simply unknown: the form works and says nothing about it.

The hub is one event loop serving every user, so the watches never hold it for long: a
list is read a page at a time (``page_size``), each page's parse and the final swap being a
slice of its own, never two in one loop turn; a burst of events is folded in slices, each
handing the loop back after ``slice_seconds``. The hub's garbage collector is Python's own
unless the operator opts in (``tune_garbage_collection``): then no collection runs while a page
or event is parsed, and once the watches have loaded the hub's long-lived objects are frozen out
of the collector's full collections. A re-list
builds the new copy beside the old one and swaps it in whole, so a reader sees either the old
cluster or the new, never half of each.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException
from kubespawner.clients import shared_client
from traitlets import Bool, Float, Int, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from ..core.availability import GpuAvailability, LiveAvailability, NodeFacts, PodFacts, add_held
from ..core.catalog import Catalog
from ..hub.state import BackgroundWork
from .facts import node_facts, pod_facts

log = logging.getLogger("dcloud")


class Gone(Exception):
    """The watch's resourceVersion is older than the API server keeps (410): list again."""


class LeanReflector(LoggingConfigurable):
    """List, then watch, one kind of object in the whole cluster, keeping lean facts of each.

    Unlike KubeSpawner's reflector (whole objects, a full list again whenever a watch ends),
    a watch that ends is resumed from the last resourceVersion it saw (bookmarks keep that
    fresh); only an expired version (410 Gone) or a failure leads to a new list. Failures are
    retried for as long as they last, at most ``max_backoff_seconds`` apart.
    """

    kind = "objects"
    list_method_name = ""

    page_size = Int(
        250,
        config=True,
        help="Objects per page when listing: each page is parsed in one piece, so this bounds "
        "how long one parse holds the hub's event loop (250 pods: about 10-15 ms on a 2-core VM).",
    )
    timeout_seconds = Int(
        300,
        config=True,
        help="How long the API server keeps one watch request open; the next one resumes "
        "where it ended, without listing again.",
    )
    list_timeout_seconds = Int(60, config=True, help="Time limit for one page of a list.")
    slice_seconds = Float(
        0.005,
        config=True,
        help="Longest stretch of folding events or list items before the hub's event loop gets "
        "a turn (the rest of a burst waits for the next slice).",
    )
    max_backoff_seconds = Float(
        30.0, config=True, help="Longest wait between retries while the API server fails or refuses."
    )
    field_selector = Unicode("", config=True, help="Field selector of the list and the watch.")
    tune_garbage_collection = Bool(
        False,
        config=True,
        help="Let DCloud change how the hub process collects garbage, which it otherwise leaves as "
        "Python has it: no collection while a page or event is parsed, and once the watches have "
        "first loaded, the hub's objects alive at that moment moved to the permanent generation "
        "(gc.freeze), so full collections stop walking them. Measured with 50,000 pods: a full "
        "collection walked about 160,000 objects, some 100 ms of held event loop, and came every so "
        "often whatever the watches did; frozen, it took 5-13 ms. The cost: a reference cycle among "
        "the frozen objects is never reclaimed. Set it on LeanReflector (both watches read it).",
    )

    def __init__(self, live: LiveAvailability, api: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live = live
        self.api = api
        self.resource_version: str | None = None
        self.failing_since: float | None = None  # wall clock of the first failure since the last good list
        self.lists = 0  # full lists so far (a re-list after 410 Gone or a failure counts too)
        self._task: asyncio.Task | None = None
        self._relist = asyncio.Event()
        self._watching: Any = None  # the open watch response, to cut short for a re-list

    # -- what a subclass says about its kind ---------------------------------------------------

    def key(self, raw: dict[str, Any]) -> str:
        raise NotImplementedError

    def facts(self, raw: dict[str, Any]) -> Any:
        """The lean record kept of ``raw``; None: keep nothing of it."""
        raise NotImplementedError

    def replace(self, items: dict[str, Any], extra: Any) -> None:
        """Hand a complete new list to the live copy in one step."""
        raise NotImplementedError

    def apply(self, key: str, facts: Any) -> None:
        raise NotImplementedError

    def fold(self, items: dict[str, Any], extra: Any, key: str, facts: Any) -> None:
        """Add one listed object to the copy being built (``extra``: per-kind sums, built alongside)."""
        if facts is not None:
            items[key] = facts

    def new_extra(self) -> Any:
        return None

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """List once (raises if that fails: the caller decides), then follow changes in the background."""
        if self.api is None:
            self.api = shared_client("CoreV1Api")
        await self.list()
        self._task = asyncio.create_task(self._follow())

    def relist(self) -> None:
        """List everything again now, as after 410 Gone (the open watch is cut short)."""
        self._relist.set()
        if self._watching is not None:
            self._watching.close()

    async def list(self) -> None:
        """Read every object, a page at a time, into a new copy; then swap it in whole."""
        method = getattr(self.api, self.list_method_name)
        items: dict[str, Any] = {}
        extra = self.new_extra()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            if self.field_selector:
                kwargs["field_selector"] = self.field_selector
            response = await method(**kwargs, _request_timeout=self.list_timeout_seconds)
            body = await response.read()
            if response.status == 410:
                raise Gone("the list's continue token expired")
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=_reason(response, body))
            await _own_turn()
            # parse, fold, free: one slice, the page size bounds it
            with _list_slice(self.tune_garbage_collection):
                page = json.loads(body)
                del body
                for raw in page["items"]:
                    self.fold(items, extra, self.key(raw), self.facts(raw))
                meta = page["metadata"]
                version, token = meta.get("resourceVersion"), meta.get("continue")
                del page
            if not token:
                break
        await _own_turn()
        with _list_slice(self.tune_garbage_collection):  # the swap is a slice of its own
            self.replace(items, extra)
        self.resource_version = version
        self.lists += 1
        self.failing_since = None

    async def _follow(self) -> None:
        delay = 1.0
        while True:
            try:
                if self._relist.is_set():
                    self._relist.clear()
                    await self.list()
                await self._watch()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Gone as gone:
                log.info("DCloud: the %s watch is too old (%s); listing again", self.kind, gone)
                self._relist.set()
            except Exception as exc:
                self.failing_since = self.failing_since or time.time()
                log.warning("DCloud: watching %s failed (%s); listing again in %.0fs", self.kind, exc, delay)
                self._relist.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_seconds)

    async def _watch(self) -> None:
        """One watch request, from the last resourceVersion until the server ends it."""
        method = getattr(self.api, self.list_method_name)
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": self.resource_version,
            "timeout_seconds": self.timeout_seconds,
            "_preload_content": False,
            # connect, then read: a silent connection (bookmarks come about every minute) is dead
            "_request_timeout": (10, self.timeout_seconds + 30),
        }
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        response = await method(**kwargs)
        self._watching = response
        try:
            if response.status == 410:
                raise Gone("410 on connect")
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=_reason(response, await response.read()))
            began = time.perf_counter()
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    if self._relist.is_set():
                        return  # cut short by relist()
                    raise
                if not line:
                    return  # the server ended the watch (timeout_seconds): resume where it stopped
                if self._relist.is_set():
                    return
                with _collector_paused(self.tune_garbage_collection):
                    self._event(json.loads(line))
                if time.perf_counter() - began > self.slice_seconds:
                    await asyncio.sleep(0)
                    began = time.perf_counter()
        finally:
            self._watching = None
            response.close()

    def _event(self, event: dict[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise Gone(raw.get("message", "410 Gone"))
            raise ApiException(status=raw.get("code"), reason=raw.get("message", "watch error"))
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if kind == "DELETED":
            self.apply(self.key(raw), None)
        elif kind in ("ADDED", "MODIFIED"):
            self.apply(self.key(raw), self.facts(raw))
        if version:
            self.resource_version = version  # BOOKMARK events only carry this

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


@contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """If ``pause`` (the operator's opt-in): no garbage collection while a page or event is
    parsed and folded (no await inside).

    Parsing makes thousands of short-lived dicts; collections triggered meanwhile find them
    alive, move them to the oldest generation and so bring on full collections, which walk
    every object of the hub (hundreds of milliseconds with JupyterHub loaded). JSON makes no
    reference cycles, so what the parse made is freed by reference counting as it is dropped.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_frozen = False
_slice_ended = 0.0  # perf_counter when a list's last slice (of any watch) ended


async def _own_turn() -> None:
    """Wait, if a slice of any watch ended moments ago, until the loop has taken its turn.

    The Node and Pod watches list at the same time (a re-list does both). When both of their
    pages arrive together, both parses are ready in the same loop iteration and would run back
    to back before anything else; a timer sleep puts the second behind the timers and I/O due.
    """
    while time.perf_counter() - _slice_ended < 0.002:
        await asyncio.sleep(0.001)


@contextmanager
def _list_slice(pause_collector: bool) -> Iterator[None]:
    """One slice of a list (a page's parse, or the swap), its end noted for :func:`_own_turn`;
    no garbage collection meanwhile if ``pause_collector``."""
    global _slice_ended
    try:
        with _collector_paused(pause_collector):
            yield
    finally:
        _slice_ended = time.perf_counter()


def freeze_long_lived() -> None:
    """Once per process: move every object alive now to the collector's permanent generation.

    Only where the operator opted in (``tune_garbage_collection``). Called when the watches
    have loaded, so what is alive is the hub's long-lived part (its modules, classes,
    configuration, the first copy of the caches). A full collection walks every tracked
    object, about 100 ms in a hub process on a 2-core VM, and one comes every so often
    whatever the watches do; frozen objects are not walked, which brings it to a few
    milliseconds. The cost: a reference cycle among objects alive now, should it ever become
    garbage, is not reclaimed; objects without cycles (the caches) are freed as usual.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


def _reason(response: Any, body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or response.reason)
    except (ValueError, AttributeError):
        return str(response.reason)


class NodeReflector(LeanReflector):
    """Every Node, as :class:`NodeFacts` (labels, taints, extended allocatable, Ready)."""

    kind = "nodes"
    list_method_name = "list_node"

    def key(self, raw: dict[str, Any]) -> str:
        return raw["metadata"]["name"]

    def facts(self, raw: dict[str, Any]) -> NodeFacts:
        return node_facts(raw)

    def replace(self, items: dict[str, Any], extra: Any) -> None:
        self.live.replace_nodes(items)

    def apply(self, key: str, facts: Any) -> None:
        self.live.set_node(key, facts)

    @property
    def resources(self) -> dict[str, NodeFacts]:
        return self.live.nodes


class ClusterPodReflector(LeanReflector):
    """Every Pod that has not finished, as :data:`PodFacts` (node, extended resources held).

    The API server leaves finished pods out (field selector), and sends a delete when one
    finishes, so a cluster full of completed Jobs costs the hub nothing.
    """

    kind = "pods"
    list_method_name = "list_pod_for_all_namespaces"

    @default("field_selector")
    def _unfinished_only(self) -> str:
        return "status.phase!=Succeeded,status.phase!=Failed"

    def key(self, raw: dict[str, Any]) -> str:
        meta = raw["metadata"]
        return f"{meta.get('namespace')}/{meta['name']}"

    def facts(self, raw: dict[str, Any]) -> PodFacts | None:
        return pod_facts(raw)

    def new_extra(self) -> dict[tuple[str, str], int]:
        return {}

    def fold(self, items: dict[str, Any], extra: Any, key: str, facts: Any) -> None:
        if facts is not None:
            items[key] = facts
            add_held(extra, facts)

    def replace(self, items: dict[str, Any], extra: Any) -> None:
        self.live.replace_pods(items, extra)

    def apply(self, key: str, facts: Any) -> None:
        self.live.set_pod(key, facts)

    @property
    def resources(self) -> dict[str, PodFacts]:
        return self.live.pods


class ClusterWatch(BackgroundWork):
    """The hub-wide Node and Pod watches (a part of the hub state); started once, on first use."""

    def __init__(self, api_factory: Callable[[], Any] | None = None, config: Config | None = None) -> None:
        self.live = LiveAvailability()
        self.config = config  # for the reflectors' traits (page size, slices, timeouts)
        self.nodes: NodeReflector | None = None
        self.pods: ClusterPodReflector | None = None
        self.unavailable: str | None = None
        self._api_factory = api_factory or (lambda: shared_client("CoreV1Api"))
        self._retry_at = 0.0
        self._starting: asyncio.Lock | None = None

    async def ensure_started(self) -> bool:
        """True when the caches are loaded; False (once logged) when they cannot be."""
        if self.nodes is not None and self.pods is not None:
            return True
        if self.unavailable is not None:
            if time.monotonic() < self._retry_at:
                return False
            self.unavailable = None  # a transient failure gets another chance
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self.nodes is not None and self.pods is not None:
                return True
            api = self._api_factory()
            live = LiveAvailability()
            nodes = NodeReflector(live, api, config=self.config)
            pods = ClusterPodReflector(live, api, config=self.config)
            try:
                await asyncio.gather(nodes.start(), pods.start())
            except Exception as exc:
                await asyncio.gather(nodes.stop(), pods.stop(), return_exceptions=True)
                status = getattr(exc, "status", None)
                forbidden = status in (401, 403)
                self.unavailable = (
                    "the hub may not watch Nodes and Pods cluster-wide (apply helm-values/rbac.yaml)"
                    if forbidden
                    else f"watching Nodes and Pods failed: {exc}"
                )
                self._retry_at = time.monotonic() + (3600 if forbidden else 60)
                log.warning("DCloud: GPU availability is hidden from the form: %s", self.unavailable)
                return False
            self.live, self.nodes, self.pods = live, nodes, pods
            if pods.tune_garbage_collection:
                freeze_long_lived()
            return True

    @property
    def stale_since(self) -> float | None:
        """Since when (wall clock) the caches may differ from the cluster; None while current."""
        times = [r.failing_since for r in (self.nodes, self.pods) if r is not None and r.failing_since]
        return min(times) if times else None

    async def refresh(self) -> None:
        await self.ensure_started()

    def availability(self, catalog: Catalog) -> dict[str, GpuAvailability] | None:
        return self.snapshot(catalog)

    def snapshot(self, catalog: Catalog) -> dict[str, GpuAvailability] | None:
        """Availability now, from counts the watches keep current (no API request, no recount)."""
        if self.nodes is None or self.pods is None:
            return None
        return self.live.availability(catalog)

    def cancel(self) -> None:
        """Cancel the watches without waiting (from synchronous code)."""
        for reflector in (self.nodes, self.pods):
            if reflector is not None:
                reflector.cancel()
        self.nodes = self.pods = None

    async def stop(self) -> None:
        for reflector in (self.nodes, self.pods):
            if reflector is not None:
                await reflector.stop()
        self.nodes = self.pods = None
        self.unavailable = None
        self.live = LiveAvailability()
