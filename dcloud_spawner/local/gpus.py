"""GPUs of one machine, for the local backend: what exists, and who holds which.

The ledger is part of the hub state (one per hub), so two running servers never get the
same GPU.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..core.catalog import Catalog, GpuClass

PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class LocalGpu:
    index: int
    uuid: str
    name: str

    @property
    def product_label(self) -> str:
        """The value GPU feature discovery would give the node label (spaces -> dashes)."""
        return self.name.strip().replace(" ", "-")


async def discover_gpus(timeout: float = 10.0) -> tuple[list[LocalGpu], str]:
    """The machine's NVIDIA GPUs via ``nvidia-smi``, and a sentence on how it went.

    Run as a subprocess of the event loop: a slow driver must not freeze the hub.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return [], "No NVIDIA GPU found on this machine (nvidia-smi is not installed)."
    try:
        proc = await asyncio.create_subprocess_exec(
            smi, "--query-gpu=index,uuid,name", "--format=csv,noheader",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return [], f"nvidia-smi failed, so no GPU is offered: {exc}."
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return [], f"nvidia-smi did not answer within {timeout:g} s, so no GPU is offered."
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip()[:200] or f"exit status {proc.returncode}"
        return [], f"nvidia-smi failed, so no GPU is offered: {detail}."
    out = stdout.decode(errors="replace")
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append(LocalGpu(int(parts[0]), parts[1], ",".join(parts[2:])))
    return gpus, f"Found {len(gpus)} NVIDIA GPU(s) with nvidia-smi."


def classify(gpus: Iterable[LocalGpu], catalog: Catalog,
             assignment: Mapping[str, list[int]] | None = None) -> dict[str, list[LocalGpu]]:
    """GPU class id -> the local GPUs of that class.

    ``assignment`` (class id -> GPU indices) wins; otherwise a GPU belongs to the class
    whose ``nvidia.com/gpu.product`` node selector equals its product label, as on
    Kubernetes with GPU feature discovery.
    """
    gpus = list(gpus)
    by_class: dict[str, list[LocalGpu]] = {g.id: [] for g in catalog.gpu_classes}
    if assignment:
        for class_id, indices in assignment.items():
            if class_id in by_class:
                by_class[class_id] = [g for g in gpus if g.index in set(indices)]
        return by_class
    for gpu in gpus:
        for gpu_class in catalog.gpu_classes:
            if _matches(gpu_class, gpu):
                by_class[gpu_class.id].append(gpu)
                break
    return by_class


def _matches(gpu_class: GpuClass, gpu: LocalGpu) -> bool:
    wanted = gpu_class.node_selector.get(PRODUCT_LABEL)
    return wanted is not None and wanted == gpu.product_label and gpu_class.resource == "nvidia.com/gpu"


class NotEnoughGpus(Exception):
    def __init__(self, free: int, total: int):
        self.free = free
        self.total = total
        super().__init__(f"{free} of {total} free")


class GpuLedger:
    """Which server holds which GPU."""

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}  # GPU uuid -> owner key

    def holder(self, gpu: LocalGpu) -> str | None:
        return self._holders.get(gpu.uuid)

    def free(self, gpus: Iterable[LocalGpu]) -> list[LocalGpu]:
        return [g for g in gpus if g.uuid not in self._holders]

    def reserve(self, owner: str, candidates: list[LocalGpu], count: int) -> list[LocalGpu]:
        """Give ``owner`` ``count`` free GPUs of ``candidates``, or raise NotEnoughGpus.

        Not a coroutine on purpose: finding free GPUs and taking them is one step of the
        event loop, so two starts can never take the same GPU.
        """
        self._release(owner)
        free = self.free(candidates)
        if len(free) < count:
            raise NotEnoughGpus(len(free), len(candidates))
        chosen = free[:count]
        for gpu in chosen:
            self._holders[gpu.uuid] = owner
        return chosen

    def adopt(self, owner: str, uuids: Iterable[str]) -> None:
        """Record GPUs held by a server that survived a hub restart."""
        for uuid in uuids:
            self._holders.setdefault(uuid, owner)

    def release(self, owner: str) -> None:
        self._release(owner)

    def clear(self) -> None:
        self._holders.clear()

    def _release(self, owner: str) -> None:
        for uuid in [u for u, o in self._holders.items() if o == owner]:
            del self._holders[uuid]

