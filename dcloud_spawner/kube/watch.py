"""The hub-wide watch caches of Nodes and Pods behind live GPU availability.

KubeSpawner's reflectors (one list, then a watch) keep every object in memory, so
rendering the form or checking a request makes no API request. Without the RBAC to
watch Nodes and Pods cluster-wide, availability is simply unknown: the form works and
says nothing about it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes_asyncio import watch
from kubespawner.clients import shared_client
from kubespawner.reflector import MultiNamespaceResourceReflector
from traitlets import default

from ..core.availability import GpuAvailability, PodHolding, compute, pod_holding
from ..core.catalog import Catalog

log = logging.getLogger("dcloud")


class NodeReflector:
    """List, then watch, all Nodes (KubeSpawner's reflector keys objects by namespace,
    which Nodes lack, so this is the same pattern for a cluster-scoped kind)."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None
        self.failing_since: float | None = None  # wall clock of the first failure since the last good list

    async def start(self) -> None:
        api = shared_client("CoreV1Api")
        version = await self._list(api)
        self._task = asyncio.create_task(self._watch(api, version))

    async def _list(self, api: Any) -> str:
        response = await api.list_node(_preload_content=False)
        data = json.loads(await response.read())
        self.resources = {n["metadata"]["name"]: n for n in data["items"]}
        return data["metadata"]["resourceVersion"]

    async def _watch(self, api: Any, version: str) -> None:
        delay = 1.0
        while True:
            try:
                async with watch.Watch().stream(api.list_node, resource_version=version,
                                                timeout_seconds=300) as stream:
                    async for event in stream:
                        raw = event["raw_object"]
                        if event["type"] == "ERROR":
                            raise RuntimeError(raw.get("message", "watch error"))  # e.g. 410 Gone
                        version = raw["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            self.resources.pop(raw["metadata"]["name"], None)
                        else:
                            self.resources[raw["metadata"]["name"]] = raw
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # start over from a fresh list
                self.failing_since = self.failing_since or time.time()
                log.warning("DCloud: node watch interrupted (%s); listing again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                try:
                    version = await self._list(api)
                    self.failing_since = None
                except Exception as list_error:
                    log.warning("DCloud: listing nodes failed: %s", list_error)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


class ClusterPodReflector(MultiNamespaceResourceReflector):
    kind = "pods"
    list_method_name = "list_pod_for_all_namespaces"

    # KubeSpawner's reflector lists everything again whenever a watch ends (by default
    # after 10 s without events). Every pod of the cluster is a large list, and parsing it
    # blocks the hub, so keep each watch open for minutes instead.
    @default("timeout_seconds")
    def _watch_long(self) -> int:
        return 300

    @default("restart_seconds")
    def _restart_rarely(self) -> int:
        return 900

    @default("request_timeout")
    def _request_outlives_watch(self) -> int:
        return 330

    failing_since: float | None = None  # wall clock of the first failure since the last good list

    # KubeSpawner's reflector has no hook for "my data is current again": every (re)connect
    # starts with this full list, so its outcome is exactly when the cache is, or stops being,
    # a true copy of the cluster.
    async def _list_and_update(self, resource_version: Any = None) -> Any:
        try:
            version = await super()._list_and_update(resource_version)
        except Exception:
            self.failing_since = self.failing_since or time.time()
            raise
        self.failing_since = None
        return version


class ClusterWatch:
    """The hub-wide Node and Pod caches (a part of the hub state); started once, on first use."""

    def __init__(self) -> None:
        self.nodes: NodeReflector | None = None
        self.pods: ClusterPodReflector | None = None
        self.unavailable: str | None = None
        self._retry_at = 0.0
        self._memo: tuple[Any, dict[str, GpuAvailability]] | None = None
        # pod uid -> (resourceVersion, what it holds): a pod is read again only when it changed
        self._holdings: dict[str, tuple[str, PodHolding | None]] = {}
        self._starting: asyncio.Lock | None = None
        self._pods_given_up = False

    async def ensure_started(self) -> bool:
        """True when the caches are loaded; False (once logged) when they cannot be."""
        if self.unavailable is not None:
            if time.monotonic() < self._retry_at:
                return False
            self.unavailable = None  # a transient failure gets another chance
        if self.nodes is not None and self.pods is not None and not self._pods_given_up:
            return True
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self.nodes is not None and self.pods is not None:
                return await self._restart_pods() if self._pods_given_up else True
            nodes, pods = NodeReflector(), ClusterPodReflector()
            pods.on_failure = self._pods_gave_up
            try:
                await asyncio.gather(nodes.start(), pods.start())
            except Exception as exc:
                await asyncio.gather(nodes.stop(), pods.stop(), return_exceptions=True)
                status = getattr(exc, "status", None)
                forbidden = status in (401, 403)
                self.unavailable = (
                    "the hub may not watch Nodes and Pods cluster-wide (apply helm-values/rbac.yaml)"
                    if forbidden else f"watching Nodes and Pods failed: {exc}"
                )
                self._retry_at = time.monotonic() + (3600 if forbidden else 60)
                log.warning("DCloud: GPU availability is hidden from the form: %s", self.unavailable)
                return False
            self.nodes, self.pods = nodes, pods
            return True

    def _pods_gave_up(self) -> None:
        """KubeSpawner's reflector stops retrying after a long outage: start a new one on next use."""
        log.warning("DCloud: the pod watch gave up; it starts again on the next form or spawn")
        self._pods_given_up = True

    async def _restart_pods(self) -> bool:
        """Replace a pod watch that gave up; until that works, the old (stale) copy stays."""
        pods = ClusterPodReflector()
        pods.on_failure = self._pods_gave_up
        try:
            await pods.start()
        except Exception as exc:
            await asyncio.gather(pods.stop(), return_exceptions=True)
            log.warning("DCloud: restarting the pod watch failed: %s", exc)
            return False
        old, self.pods, self._pods_given_up = self.pods, pods, False
        if old is not None:
            await old.stop()
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
        """Availability now; recomputed only when a cached object changed since last time."""
        if self.nodes is None or self.pods is None:
            return None
        nodes = list(self.nodes.resources.values())
        pods = list(self.pods.resources.values())
        # every change to an object gives it a new resourceVersion: a cheap change detector
        key = (id(catalog), hash(tuple(o["metadata"].get("resourceVersion") for o in nodes)),
               hash(tuple(o["metadata"].get("resourceVersion") for o in pods)))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, compute(catalog, nodes, pods, self._cached_holding(catalog, pods)))
        return dict(self._memo[1])

    def _cached_holding(self, catalog: Catalog, pods: list[dict[str, Any]]) -> Callable[[Any], Any]:
        resources = sorted({g.resource for g in catalog.gpu_classes})
        live = {p["metadata"].get("uid") for p in pods}
        for gone in self._holdings.keys() - live:
            del self._holdings[gone]

        def holding(pod: Mapping[str, Any]) -> PodHolding | None:
            meta = pod["metadata"]
            uid, version = meta.get("uid"), meta.get("resourceVersion")
            cached = self._holdings.get(uid)
            if cached is None or cached[0] != version:
                cached = (version, pod_holding(pod, resources))
                self._holdings[uid] = cached
            return cached[1]

        return holding

    def cancel(self) -> None:
        """Cancel the watches without waiting (from synchronous code)."""
        if self.nodes is not None:
            self.nodes.cancel()
        if self.pods is not None and self.pods.watch_task is not None:
            self.pods.watch_task.cancel()
        self.nodes = self.pods = None

    async def stop(self) -> None:
        for reflector in (self.nodes, self.pods):
            if reflector is not None:
                await reflector.stop()
        self.nodes = self.pods = None
        self.unavailable = None
        self._memo = None
        self._holdings = {}

