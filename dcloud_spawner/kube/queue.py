"""What the hub knows of Kueue: who waits for which GPU class, and where a server is in line.

``KueueView`` (one per hub, in the hub state) reads the notebook namespace's Workloads and
the ClusterQueues every ``interval`` seconds, so the form, the admin page and the metrics
show queue lengths without an API request of their own. ``position`` asks Kueue's
visibility API where one server's workload is in line; only a waiting spawn asks it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiException, CustomObjectsApi
from kubespawner.clients import shared_client

from ..core.catalog import Catalog
from ..hub.state import BackgroundWork
from .kueue_objects import GROUP, VERSION, VISIBILITY_API, flavor_name
from .workloads import admitted, finished, workload_class

log = logging.getLogger("dcloud")
VISIBILITY = f"/apis/{VISIBILITY_API}"


def _owner_pod(workload: dict[str, Any]) -> str | None:
    for owner in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "Pod":
            return owner.get("name")
    return None


@dataclass(frozen=True)
class QueueRow:
    """One ClusterQueue as the admin page shows it."""

    name: str
    pending: int
    admitted: int
    gpus_admitted: dict[str, int]  # GPU class id -> GPUs in use by admitted workloads


class KueueView(BackgroundWork):
    """The notebook namespace's Workloads and all ClusterQueues, read every ``interval``."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.namespace: str | None = None
        self.workloads: list[dict[str, Any]] = []
        self.cluster_queues: list[dict[str, Any]] = []
        self.read_at: float | None = None
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._api: CustomObjectsApi | None = None
        self._changed = asyncio.Event()

    def ensure_started(self, namespace: str) -> None:
        if self._task is not None and not self._task.done():
            return
        self.namespace = namespace
        self._api = shared_client("CustomObjectsApi")
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kueue or the API server down: keep the last view, say so
                if self.error is None:
                    log.warning("DCloud: reading Kueue's queues failed: %s", exc)
                self.error = str(exc)
            await asyncio.sleep(self.interval)

    async def read(self) -> None:
        assert self._api is not None and self.namespace is not None
        workloads = await self._api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workloads", _request_timeout=10)
        queues = await self._api.list_cluster_custom_object(GROUP, VERSION, "clusterqueues", _request_timeout=10)
        self.workloads = workloads.get("items") or []
        self.cluster_queues = queues.get("items") or []
        self.read_at = time.time()
        self.error = None

    def _waiting(self, catalog: Catalog) -> list[tuple[str, int]]:
        """(GPU class id, GPUs asked for) of each workload waiting for a class."""
        waiting = []
        for workload in self.workloads:
            if admitted(workload) or finished(workload):
                continue
            gpu_id, count = workload_class(catalog, workload)
            if gpu_id:
                waiting.append((gpu_id, count))
        return waiting

    def waiting(self, catalog: Catalog) -> dict[str, int]:
        """GPU class id -> workloads waiting for it (notebooks and batch jobs alike)."""
        counts = Counter(gpu_id for gpu_id, _ in self._waiting(catalog))
        return {g.id: counts.get(g.id, 0) for g in catalog.gpu_classes}

    def queued_gpus(self, catalog: Catalog) -> dict[str, int]:
        """GPU class id -> GPUs asked for by waiting workloads."""
        counts: Counter[str] = Counter()
        for gpu_id, count in self._waiting(catalog):
            counts[gpu_id] += count
        return {g.id: counts.get(g.id, 0) for g in catalog.gpu_classes}

    def workload_of(self, pod_name: str) -> dict[str, Any] | None:
        for workload in self.workloads:
            if _owner_pod(workload) == pod_name:
                return workload
        return None

    def rows(self, catalog: Catalog) -> list[QueueRow]:
        by_flavor = {flavor_name(catalog, g): g for g in catalog.gpu_classes}
        rows = []
        for queue in sorted(self.cluster_queues, key=lambda q: q["metadata"]["name"]):
            status = queue.get("status") or {}
            used: dict[str, int] = {}
            for flavor in status.get("flavorsUsage") or []:
                gpu = by_flavor.get(flavor.get("name", ""))
                if gpu is None:
                    continue
                for resource in flavor.get("resources") or []:
                    if resource.get("name") == gpu.resource:
                        used[gpu.id] = used.get(gpu.id, 0) + int(str(resource.get("total", 0)) or 0)
            rows.append(QueueRow(queue["metadata"]["name"], int(status.get("pendingWorkloads") or 0),
                                 int(status.get("admittedWorkloads") or 0), used))
        return rows

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self.cancel()
        if self._task is not None:
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


async def position(api_client: Any, namespace: str, local_queue: str, pod_name: str) -> tuple[int, int] | None:
    """(1-based place in line, how many wait in that queue) of the pod's workload; None when
    Kueue does not list it (admitted meanwhile, or not yet seen)."""
    path = f"{VISIBILITY}/namespaces/{namespace}/localqueues/{local_queue}/pendingworkloads"
    try:
        body = await api_client.call_api(
            path, "GET", header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            response_types_map={200: "object"}, _return_http_data_only=True, _request_timeout=5)
    except ApiException as exc:
        log.debug("DCloud: Kueue's visibility API answered %s for %s", exc.status, path)
        return None
    items = (body or {}).get("items") or []
    for item in items:
        owners = (item.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("kind") == "Pod" and o.get("name") == pod_name for o in owners):
            return int(item.get("positionInLocalQueue", 0)) + 1, len(items)
    return None


def hold_reason(workload: dict[str, Any] | None) -> str:
    """Kueue's own words for why a workload waits (its QuotaReserved condition)."""
    for condition in ((workload or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "QuotaReserved" and condition.get("status") == "False":
            return str(condition.get("message") or "")[:200]
    return ""
