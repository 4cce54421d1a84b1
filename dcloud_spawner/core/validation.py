"""The one gate between a user's request and a server: ``validate``.

Pure: catalog + request + groups in, Plan out (or one RequestError). Every entry point
calls this and nothing else decides what a user may have.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .catalog import Allowance, Catalog, Dataset, Environment, GpuClass
from .errors import RequestError, clip
from .plan import Plan
from .quantity import format_memory, memory_bytes
from .request import ServerRequest

MAX_PACKAGE_CHARS = 200
# pip installs a requirement whose name ends like this from a local file, not the index
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz",
                    ".tlz", ".tar.lz", ".tar.lzma")


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


def validate(request: ServerRequest | dict[str, Any] | None, catalog: Catalog,
             groups: Iterable[str]) -> Plan:
    """The Plan for ``request`` by a user in ``groups``, or RequestError with the reason."""
    if not isinstance(request, ServerRequest):
        request = ServerRequest.parse(request)
    allowance = catalog.allowance(groups)
    environment = _environment(request, catalog, allowance)
    gpu, gpu_count = _gpu(request, catalog, allowance, environment)
    cpu = _cpu(request, catalog, allowance)
    memory = _memory(request, catalog, allowance)
    home = _size(request.home, "home", "Home size", catalog.storage.home, allowance.max_home,
                 allowance.default_home)
    scratch = _size(request.scratch, "scratch", "Scratch size", catalog.storage.scratch, allowance.max_scratch,
                    allowance.default_scratch)
    datasets = _datasets(request, catalog, allowance)
    packages = _packages(request.packages, catalog)
    if request.wait and not catalog.queueing.enabled:
        raise RequestError("wait", "Wait in line is not available on this hub (queueing is off); "
                                   "leave it out, and start when GPUs are free.")

    fraction_cpu = catalog.resources.cpu.request_fraction
    fraction_mem = catalog.resources.memory.request_fraction
    return Plan(
        environment=environment,
        image=environment.image.gpu if gpu else environment.image.cpu,  # type: ignore[arg-type]
        gpu=gpu,
        gpu_count=gpu_count,
        cpu_limit=cpu,
        cpu_request=max(round(cpu * fraction_cpu, 3), 0.001),
        memory_limit=memory,
        memory_request=int(memory * fraction_mem),
        shm_bytes=min(catalog.shared_memory, memory // 2),
        datasets=datasets,
        packages=packages,
        package_index_url=catalog.packages.index_url,
        wait=request.wait,
        home_bytes=home,
        home_defaulted=request.home is None and home is not None,
        scratch_bytes=scratch,
        storage=catalog.storage,
    )


def _environment(request: ServerRequest, catalog: Catalog, allowance: Allowance) -> Environment:
    env_id = request.environment or (allowance.environments[0] if allowance.environments else None)
    if env_id not in allowance.environments:
        shown = clip(str(env_id))
        raise RequestError(
            "environment",
            f"Environment '{shown}' is not available to you; you can use: "
            f"{_listing(allowance.environments)}.",
        )
    return catalog.environment(env_id)


def _gpu(request: ServerRequest, catalog: Catalog, allowance: Allowance,
         environment: Environment) -> tuple[GpuClass | None, int]:
    if request.gpu is None:
        return None, 0
    if not allowance.gpu_classes or allowance.max_gpus == 0:
        raise RequestError(
            "gpu", "GPUs are not available to you; leave GPU type empty for a CPU-only server."
        )
    if request.gpu.type not in allowance.gpu_classes:
        raise RequestError(
            "gpu.type",
            f"GPU class '{clip(request.gpu.type)}' is not available to you; you can use: "
            f"{_listing(allowance.gpu_classes)}.",
        )
    gpu = catalog.gpu_class(request.gpu.type)
    limit = min(gpu.max_count, allowance.max_gpus)
    if request.gpu.count > limit:
        raise RequestError(
            "gpu.count",
            f"GPU count {request.gpu.count} is more than you may use for {gpu.id}; "
            f"choose 1 to {limit}.",
        )
    if not environment.has_gpu_image:
        with_gpu = [e for e in allowance.environments if catalog.environment(e).has_gpu_image]
        raise RequestError(
            "environment",
            f"Environment '{environment.id}' has no GPU image; for a GPU choose: "
            f"{_listing(with_gpu)}.",
        )
    return gpu, request.gpu.count


def _cpu(request: ServerRequest, catalog: Catalog, allowance: Allowance) -> float:
    cpu_range = catalog.resources.cpu
    cpu_max = allowance.max_cpu
    cpu = request.cpu if request.cpu is not None else allowance.default_cpu
    if not cpu_range.min <= cpu <= cpu_max:
        raise RequestError(
            "cpu", f"CPU cores must be between {cpu_range.min:g} and {cpu_max:g} for you."
        )
    if Decimal(repr(cpu)).as_tuple().exponent < -3:  # the number as written, not its binary float
        raise RequestError("cpu", "CPU cores can have at most three decimals, e.g. 0.5 or 1.25.")
    return cpu


def _memory(request: ServerRequest, catalog: Catalog, allowance: Allowance) -> int:
    mem_min, mem_max = catalog.resources.memory.min, allowance.max_memory
    if request.memory is None:
        memory = allowance.default_memory
    else:
        try:
            memory = memory_bytes(request.memory)
        except ValueError:
            raise RequestError(
                "memory",
                f"Memory '{clip(str(request.memory))}' is not a quantity such as 16Gi or 512Mi.",
            ) from None
    if not mem_min <= memory <= mem_max:
        raise RequestError(
            "memory",
            f"Memory must be between {format_memory(mem_min)} and {format_memory(mem_max)} "
            "for you.",
        )
    return memory


def _datasets(request: ServerRequest, catalog: Catalog, allowance: Allowance) -> tuple[Dataset, ...]:
    chosen: list[str] = []
    for dataset_id in request.datasets:
        if dataset_id not in allowance.datasets:
            raise RequestError(
                "datasets",
                f"Dataset '{clip(dataset_id)}' is not available to you; you can use: "
                f"{_listing(allowance.datasets)}.",
            )
        if dataset_id not in chosen:
            chosen.append(dataset_id)
    return tuple(catalog.dataset(d) for d in chosen)


def _size(asked: str | int | None, field: str, name: str, offered: Any, most: int | None,
          default: int | None) -> int | None:
    """A storage size the user asked for (or the default), within what they may have."""
    if offered is None or most is None:
        if asked is not None:
            raise RequestError(field, f"{name} is not a choice on this hub; leave it out.")
        return None
    if asked is None:
        return default
    try:
        size = memory_bytes(asked)
    except ValueError:
        raise RequestError(field, f"{name} '{clip(str(asked))}' is not a quantity such as 20Gi or 512Mi.") from None
    if not offered.min <= size <= most:
        raise RequestError(field, f"{name} must be between {format_memory(offered.min)} and "
                                  f"{format_memory(most)} for you.")
    return size


def _packages(specs: list[str], catalog: Catalog) -> tuple[str, ...]:
    settings = catalog.packages
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        return ()
    if not settings.enabled:
        raise RequestError("packages", "Extra packages are turned off on this hub.")
    if len(specs) > settings.max_count:
        raise RequestError(
            "packages", f"Extra packages: at most {settings.max_count} are allowed, got {len(specs)}."
        )
    normal: list[str] = []
    for spec in specs:
        shown = clip(spec)
        if len(spec) > MAX_PACKAGE_CHARS:
            raise RequestError(
                "packages", f"Extra package '{shown}' is longer than {MAX_PACKAGE_CHARS} characters."
            )
        if spec.startswith("-"):
            raise RequestError(
                "packages",
                f"Extra package '{shown}' is not a requirement such as 'numpy>=1.26' "
                "(options are not allowed).",
            )
        try:
            requirement = Requirement(spec)
        except InvalidRequirement:
            raise RequestError(
                "packages",
                f"Extra package '{shown}' is not a requirement such as 'numpy>=1.26'.",
            ) from None
        if requirement.url:
            raise RequestError(
                "packages",
                f"Extra package '{shown}' points at a URL; only names from the package index "
                "are allowed.",
            )
        if requirement.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise RequestError(
                "packages",
                f"Extra package '{shown}' looks like a file name, which pip would read from disk; "
                "only names from the package index are allowed.",
            )
        normal.append(str(requirement))
    return tuple(normal)
