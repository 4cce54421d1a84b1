"""Prometheus metrics on the hub's own /hub/metrics, and the numbers the admin page shows.

Both read the same in-memory state (the quota ledger, the backend's live data), so the
page and the metrics always agree, and a scrape makes no Kubernetes API request.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.availability import GpuAvailability
from ..core.catalog import Catalog
from ..core.quotas import Claim

Numbers = Callable[[], "tuple[Catalog, dict[str, GpuAvailability] | None] | None"]
Queued = Callable[[], "dict[str, int] | None"]
# A wait in line lasts seconds to hours.
WAIT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))


@dataclass
class Allocations:
    """Who holds what right now, by GPU class, user and group."""

    by_class: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, dict[str, float]] = field(default_factory=dict)
    by_group: dict[str, dict[str, float]] = field(default_factory=dict)
    servers: list[dict[str, object]] = field(default_factory=list)
    availability: dict[str, GpuAvailability] | None = None


def allocations(catalog: Catalog, claims: Iterable[Claim],
                availability: dict[str, GpuAvailability] | None) -> Allocations:
    by_class: Counter[str] = Counter({g.id: 0 for g in catalog.gpu_classes})
    by_user: dict[str, dict[str, float]] = defaultdict(lambda: {"servers": 0, "gpus": 0, "cpu": 0.0, "memory": 0})
    by_group: dict[str, dict[str, float]] = defaultdict(lambda: {"servers": 0, "gpus": 0, "cpu": 0.0, "memory": 0})
    servers = []
    for claim in sorted(claims, key=lambda c: c.key):
        if claim.gpu_class:
            by_class[claim.gpu_class] += claim.gpus
        for bucket in [by_user[claim.user]] + [by_group[g] for g in claim.groups or ("(no group)",)]:
            bucket["servers"] += 1
            bucket["gpus"] += claim.gpus
            bucket["cpu"] += claim.cpu
            bucket["memory"] += claim.memory
        servers.append({"user": claim.user, "server": claim.server, "groups": list(claim.groups),
                        "gpu_class": claim.gpu_class, "gpus": claim.gpus, "cpu": claim.cpu,
                        "memory": claim.memory})
    return Allocations(dict(by_class), dict(by_user), dict(by_group), servers, availability)


class GpuCollector(Collector):
    """Computes the GPU gauges at scrape time from the hub's state."""

    def __init__(self, numbers: Numbers, claims: Callable[[], Iterable[Claim]]) -> None:
        self.numbers = numbers
        self.claims = claims
        self.queued: Queued | None = None  # set by a backend that queues (Kueue)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = self.numbers()
        if found is None:
            return
        catalog, availability = found
        current = allocations(catalog, self.claims(), availability)
        allocated = GaugeMetricFamily("dcloud_gpus_allocated", "GPUs held by this hub's servers, by class.",
                                      labels=["gpu_class"])
        for gpu_class, count in sorted(current.by_class.items()):
            allocated.add_metric([gpu_class], count)
        yield allocated
        if availability is not None:
            free = GaugeMetricFamily("dcloud_gpus_free", "GPUs free on the cluster now, by class.",
                                     labels=["gpu_class"])
            total = GaugeMetricFamily("dcloud_gpus_total", "Allocatable GPUs on Ready nodes, by class.",
                                      labels=["gpu_class"])
            for gpu_class, live in sorted(availability.items()):
                free.add_metric([gpu_class], live.free)
                total.add_metric([gpu_class], live.total)
            yield free
            yield total
        queued = self.queued() if self.queued else None
        if queued is not None:
            waiting = GaugeMetricFamily("dcloud_gpus_queued", "GPUs asked for by workloads waiting in Kueue's "
                                        "line in the notebook namespace, by class.", labels=["gpu_class"])
            for gpu_class, count in sorted(queued.items()):
                waiting.add_metric([gpu_class], count)
            yield waiting


class Metrics:
    """DCloud's metrics in the hub's registry (the one /hub/metrics serves), while the hub state lives."""

    def __init__(self, numbers: Numbers, claims: Callable[[], Iterable[Claim]],
                 registry: object = REGISTRY) -> None:
        self.registry = registry
        self.spawns_refused = PromCounter(
            "dcloud_spawns_refused",
            "Spawns DCloud refused, by reason (validation, quota, capacity, unschedulable, resourcequota, "
            "gpu_unavailable).",
            ["reason"], registry=registry,
        )
        self.queue_wait = Histogram(
            "dcloud_queue_wait_seconds",
            "How long servers waited in Kueue's line, by how the wait ended (admitted, expired, refused, left).",
            ["outcome"], buckets=WAIT_BUCKETS, registry=registry,
        )
        self.gpus = GpuCollector(numbers, claims)
        registry.register(self.gpus)  # type: ignore[attr-defined]

    def refused(self, reason: str) -> None:
        self.spawns_refused.labels(reason=reason).inc()

    def queue_waited(self, outcome: str, seconds: float) -> None:
        self.queue_wait.labels(outcome=outcome).observe(seconds)

    def unregister(self) -> None:
        for collector in (self.spawns_refused, self.queue_wait, self.gpus):
            self.registry.unregister(collector)  # type: ignore[attr-defined]
