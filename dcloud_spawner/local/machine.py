"""This machine, as the local backend shares it between servers: its GPUs, who holds
which, and how CPU and memory limits are enforced. One per hub (a part of the hub state)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..core.availability import GpuAvailability
from ..core.catalog import Catalog
from . import gpus, limits

log = logging.getLogger("dcloud")


class LocalMachine:
    """GPUs (configured, or found with nvidia-smi on first use), the GPU ledger and the limiter."""

    def __init__(self, configured: Sequence[gpus.LocalGpu] = (),
                 assignment: Mapping[str, list[int]] | None = None) -> None:
        self.ledger = gpus.GpuLedger()
        self.assignment = dict(assignment) if assignment else None
        self._found: tuple[list[gpus.LocalGpu], str] | None = None
        if configured:
            found = list(configured)
            self._found = (found, f"{len(found)} GPU(s) configured in DCloudLocalSpawner.local_gpus.")
        self._limiter: limits.Limiter | None = None

    async def refresh(self) -> None:
        """Look for GPUs once (nvidia-smi runs as a subprocess of the event loop)."""
        if self._found is None:
            self._found = await gpus.discover_gpus()
            log.info("DCloud local backend: %s", self._found[1])

    def inventory(self) -> tuple[list[gpus.LocalGpu], str]:
        """The GPUs found, and a sentence on how; empty until :meth:`refresh` has run."""
        return self._found or ([], "GPUs have not been looked for yet.")

    def gpus_by_class(self, catalog: Catalog) -> dict[str, list[gpus.LocalGpu]]:
        return gpus.classify(self.inventory()[0], catalog, self.assignment)

    def availability(self, catalog: Catalog) -> dict[str, GpuAvailability]:
        result = {}
        for class_id, members in self.gpus_by_class(catalog).items():
            free = len(self.ledger.free(members))
            result[class_id] = GpuAvailability(free, len(members), free)
        return result

    @property
    def limiter(self) -> limits.Limiter:
        if self._limiter is None:
            self._limiter = limits.detect()
            log.info("DCloud local backend: %s", self._limiter.reason)
        return self._limiter
