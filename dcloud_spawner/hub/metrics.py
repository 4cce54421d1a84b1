"""Prometheus metrics on the hub's own /hub/metrics, and the numbers the admin page shows.

Both read the same in-memory state (the quota ledger, the availability caches), so the
page and the metrics always agree, and a scrape makes no Kubernetes API request.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import quota
from .catalog import Catalog
from .form import GpuAvailability

SPAWNS_REFUSED = PromCounter(
    "dcloud_spawns_refused",
    "Spawns DCloud refused, by reason (validation, quota, capacity, unschedulable, gpu_unavailable).",
    ["reason"],
)


@dataclass
class Allocations:
    """Who holds what right now, by GPU class, user and group."""

    by_class: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, dict[str, float]] = field(default_factory=dict)
    by_group: dict[str, dict[str, float]] = field(default_factory=dict)
    servers: list[dict[str, object]] = field(default_factory=list)
    availability: dict[str, GpuAvailability] | None = None


def allocations(catalog: Catalog, availability: dict[str, GpuAvailability] | None) -> Allocations:
    by_class: Counter[str] = Counter({g.id: 0 for g in catalog.gpu_classes})
    by_user: dict[str, dict[str, float]] = defaultdict(lambda: {"servers": 0, "gpus": 0, "cpu": 0.0, "memory": 0})
    by_group: dict[str, dict[str, float]] = defaultdict(lambda: {"servers": 0, "gpus": 0, "cpu": 0.0, "memory": 0})
    servers = []
    for claim in sorted(quota.ledger.claims, key=lambda c: c.key):
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


class DCloudCollector(Collector):
    """Computes the GPU gauges at scrape time from a source set by the spawners."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[Catalog, dict[str, GpuAvailability] | None]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.source is None:
            return
        catalog, availability = self.source()
        current = allocations(catalog, availability)
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


collector = DCloudCollector()
REGISTRY.register(collector)
