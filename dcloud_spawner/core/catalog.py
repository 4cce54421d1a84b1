"""The admin's catalog: what exists, and who may use what.

The catalog is one YAML file. It is parsed into pydantic models that refuse unknown
keys and check every cross-reference, so a typo fails at load time with the key and
its place named, instead of surfacing later as a pod that does not schedule.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import clip, input_path, printable
from .loading import Limits, LoadProblem, load_yaml
from .quantity import format_memory, memory_bytes

# Catalog ids end up in labels, volume names and form field values.
ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]
# Label keys and values of node selectors, as Kubernetes accepts them.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


_KIND = {"environments": "environment", "gpu_classes": "GPU class", "datasets": "dataset"}

# Where DCloud itself mounts in a notebook container (and the kernel's own file systems):
# a dataset mounted over or inside one of them would hide it or fail the pod.
PACKAGES_DIR = "/opt/dcloud/packages"
SCRATCH_DIR = "/scratch"
HOME_DIR = "/home/jovyan"  # the notebook images' home, where the chart mounts the home volume
OWN_MOUNTS = {PACKAGES_DIR: "the extra packages", "/dev/shm": "shared memory", HOME_DIR: "the home directory",
              SCRATCH_DIR: "the scratch disk",
              "/proc": "the kernel's files", "/sys": "the kernel's files"}
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")

MAX_CATALOG_BYTES = 8 * 1024 * 1024
# A catalog is about 7 levels deep; anchors are allowed, but not to expand without end.
CATALOG_LIMITS = Limits(max_depth=64, max_nodes=200_000, aliases=True)
MAX_ERROR_CHARS = 300


class CatalogError(ValueError):
    """A catalog that cannot be used; ``errors`` lists one line per problem.

    Lines quote the catalog (keys, values), so each is escaped to one line and bounded:
    ``dcloud check`` prints them as ``error:`` lines and the hub logs them.
    """

    def __init__(self, errors: list[str]):
        self.errors = [clip(line, MAX_ERROR_CHARS) for line in errors]
        super().__init__("; ".join(self.errors))


def _one_line(value: str) -> str:
    """Text shown to users (form, Dockerfile comments, logs): one line, no control characters.

    Surrounding whitespace is dropped first, so a folded YAML block (``>``) is fine.
    """
    value = value.strip()
    if printable(value) != value:
        bad = next(c for c in value if printable(c) != c)
        raise ValueError(f"must be one line of text without control characters (found '{printable(bad)}')")
    return value


Text = Annotated[str, AfterValidator(_one_line)]


def _image(value: str) -> str:
    if not _IMAGE.match(value):
        raise ValueError(f"'{clip(value, 80)}' is not an image reference such as "
                         "quay.io/jupyter/scipy-notebook:2025-07-07")
    return value


Image = Annotated[str, AfterValidator(_image)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _memory(value: object) -> int:
    """The one memory validator: a quantity such as 16Gi, kept as bytes."""
    try:
        return memory_bytes(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"'{clip(str(value), 80)}' is not a memory quantity such as 16Gi") from exc


# Memory in the catalog: written as a quantity, held as bytes, dumped as a quantity again.
Memory = Annotated[int, BeforeValidator(_memory), PlainSerializer(format_memory, return_type=str)]


class EnvironmentImages(_Strict):
    gpu: Image | None = Field(None, description="Image used when the server has a GPU.")
    cpu: Image = Field(description="Image used without a GPU.")


class Environment(_Strict):
    id: Id
    display_name: Text
    description: Text = ""
    image: EnvironmentImages
    python: str | None = Field(
        None,
        description="Local backend only: the Python interpreter of this environment "
        "(default: the interpreter running the hub).",
    )

    @property
    def has_gpu_image(self) -> bool:
        return self.image.gpu is not None


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    def manifest(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class GpuClass(_Strict):
    id: Id
    display_name: Text
    description: Text = ""
    resource: str = Field("nvidia.com/gpu", description="Kubernetes extended resource name.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    max_count: int = Field(1, ge=1, le=64)

    @field_validator("resource")
    @classmethod
    def _resource_name(cls, value: str) -> str:
        if not _RESOURCE_NAME.match(value):
            raise ValueError(f"'{clip(value, 80)}' is not an extended resource name such as nvidia.com/gpu")
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(label)):
                raise ValueError(f"'{clip(f'{key}={label}', 80)}' is not a valid node label")
        return value


class _Range(_Strict):
    """A choice between ``min`` and ``max`` with a ``default`` in between."""

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.min <= self.default <= self.max:  # type: ignore[attr-defined]
            raise ValueError("needs min <= default <= max")
        return self


class NumberRange(_Range):
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    default: float = Field(gt=0)
    request_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Request = chosen value × this fraction; the chosen value is the limit.",
    )


class MemoryRange(_Range):
    min: Memory
    max: Memory
    default: Memory
    request_fraction: float = Field(1.0, gt=0, le=1)


class Resources(_Strict):
    cpu: NumberRange = NumberRange(min=0.5, max=64, default=1)
    memory: MemoryRange = MemoryRange(min="512Mi", max="512Gi", default="2Gi")


_STORAGE_CLASS = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class HomeStorage(_Strict):
    """One persistent home volume per user; it only ever grows."""

    storage_class: str | None = Field(
        None, pattern=_STORAGE_CLASS,
        description="StorageClass of the home volumes (null: the cluster's default); it must allow "
        "expansion for a user to grow their home.")
    min: Memory = Field(1024**3, description="Smallest size a user may ask for.")
    default: Memory = Field(10 * 1024**3, description="Size of a new home volume when the user asks for none.")
    max: Memory = Field(100 * 1024**3, description="Largest size anyone may grow a home volume to.")

    @model_validator(mode="after")
    def _ordered(self) -> HomeStorage:
        if not self.min <= self.default <= self.max:
            raise ValueError("needs min <= default <= max")
        return self


class ScratchStorage(_Range):
    """Per-server scratch disk at /scratch, gone with the server."""

    storage_class: str | None = Field(
        None, pattern=_STORAGE_CLASS,
        description="StorageClass of a generic ephemeral volume; null: an emptyDir with a sizeLimit.")
    min: Memory = 1024**3
    max: Memory = 100 * 1024**3
    default: Memory = 10 * 1024**3


class EphemeralStorage(_Strict):
    """``ephemeral-storage`` of every container: its writable layer and logs."""

    request: Memory = Field(1024**3, description="What the scheduler reserves on the node.")
    limit: Memory = Field(10 * 1024**3, description="Beyond this the kubelet evicts the server.")

    @model_validator(mode="after")
    def _ordered(self) -> EphemeralStorage:
        if self.request > self.limit:
            raise ValueError("needs request <= limit")
        return self


class Storage(_Strict):
    home: HomeStorage | None = Field(None, description="Null: no home size to choose (the site's own volume, if any).")
    scratch: ScratchStorage | None = Field(None, description="Null: no /scratch.")
    ephemeral: EphemeralStorage | None = Field(None, description="Null: no ephemeral-storage requests or limits.")
    package_environments: int = Field(
        3, ge=1, le=50,
        description="Package environments kept on a user's home volume; older ones are removed.")


class PvcSource(_Strict):
    type: Literal["pvc"]
    claim_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class NfsSource(_Strict):
    type: Literal["nfs"]
    server: str = Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    path: str = Field(pattern=r"^/")
    csi_driver: str | None = Field(
        "nfs.csi.k8s.io",
        description="Mount through this CSI driver as an inline volume (allowed under Pod "
        "Security 'restricted'); null mounts a plain nfs volume, which needs 'baseline'.",
    )


class HostPathSource(_Strict):
    type: Literal["host_path"]
    path: str = Field(pattern=r"^/")


DatasetSource = Annotated[PvcSource | NfsSource | HostPathSource, Field(discriminator="type")]


class Dataset(_Strict):
    id: Id
    display_name: Text
    description: Text = ""
    size: Text = ""
    format: Text = ""
    source: DatasetSource
    mount_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9._/-]*$")

    @field_validator("mount_path")
    @classmethod
    def _normal_path(cls, value: str | None) -> str | None:
        if value is not None and (
            value.rstrip("/") == "" or "//" in value or posixpath.normpath(value) != value
        ):
            raise ValueError(f"'{value}' must be a normalised absolute path below / (no '..', '.', "
                             "'//' or trailing '/'), such as /datasets/imagenet")
        return value
    read_only: bool = True
    groups: list[str] | None = Field(
        None, description="Groups that may use it; null means everyone."
    )

    @property
    def path_in_pod(self) -> str:
        return self.mount_path or f"/datasets/{self.id}"


class Packages(_Strict):
    enabled: bool = True
    index_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    max_count: int = Field(10, ge=0, le=100)


Choices = list[str] | Literal["*"]


class Totals(_Strict):
    """Limits on the sum over all running servers (of one user, or of a group's members)."""

    max_gpus: int | None = Field(None, ge=0)
    max_gpus_per_class: dict[str, int] = Field(default_factory=dict)
    max_cpu: float | None = Field(None, gt=0)
    max_memory: Memory | None = None
    max_scratch: Memory | None = Field(None, description="Scratch disk over the servers.")
    max_home: Memory | None = Field(None, description="Group quotas only: home volumes of the group's members.")


class Quotas(_Strict):
    groups: dict[str, Totals] = Field(
        default_factory=dict, description="Totals over the running servers of each group's members."
    )


_DURATION = re.compile(r"^(?:(\d{1,4})h)?(?:(\d{1,5})m)?(?:(\d{1,6})s)?$")


def _seconds(value: Any) -> Any:
    """A duration as the admin writes it (``30m``, ``1h30m``, ``90s``, or seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30m, 1h or 90s")
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"'{clip(str(value), 40)}' is not a duration such as 30m, 1h or 90s")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


Duration = Annotated[int, BeforeValidator(_seconds), Field(ge=1, le=7 * 24 * 3600)]


class Queueing(_Strict):
    """Waiting in line for GPUs, on Kueue (docs/queueing.md)."""

    enabled: bool = Field(False, description="Queue notebook pods with Kueue; group quotas become ClusterQueues.")
    max_wait: Duration = Field(1800, description="How long a user may wait in line, e.g. 30m.")
    max_queued_per_user: int = Field(1, ge=1, le=20, description="Servers one user may have waiting at once.")
    refuse_after: Duration = Field(
        10, description="Without 'wait', how long Kueue may hold a pod back before the spawn is refused.")
    preemption: bool = Field(
        False, description="Let a queue reclaim its own quota by preempting notebooks that borrowed it.")
    strategy: Literal["BestEffortFIFO", "StrictFIFO"] = Field(
        "BestEffortFIFO", description="Kueue's order: StrictFIFO never lets a smaller request pass a larger one.")
    cohort: str = Field("dcloud", pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
    capacity: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict, description="GPUs of each class in the cluster (dcloud kueue can read them).")
    cpu_capacity: float | None = Field(None, gt=0, description="CPU cores the cohort may hand out.")
    memory_capacity: Memory | None = None

    def wait_words(self) -> str:
        """``max_wait`` as the form says it: "30 minutes", "1 hour 30 minutes", "90 seconds"."""
        return duration_words(self.max_wait)


def duration_words(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in
             ((hours, "hour"), (minutes, "minute"), (secs, "second")) if n]
    return " ".join(parts) or "0 seconds"


class Policy(_Strict):
    environments: Choices = "*"
    gpu_classes: Choices = Field(default_factory=list)
    datasets: Choices = Field(default_factory=list)
    max_gpus: int = Field(0, ge=0)
    max_cpu: float | None = Field(None, gt=0)
    max_memory: Memory | None = None
    max_home: Memory | None = Field(None, description="Largest home volume a member may grow to.")
    max_scratch: Memory | None = Field(None, description="Largest scratch disk of one server.")
    totals: Totals | None = Field(None, description="Per-user totals across all of the user's servers.")


class Policies(_Strict):
    everyone: Policy = Policy()
    groups: dict[str, Policy] = Field(default_factory=dict)


@dataclass(frozen=True)
class Allowance:
    """What one user may choose: the union of the policies of their groups."""

    environments: tuple[str, ...]
    gpu_classes: tuple[str, ...]
    datasets: tuple[str, ...]
    max_gpus: int
    max_cpu: float
    max_memory: int
    default_cpu: float  # the catalog's default, within this user's maximum
    default_memory: int
    max_home: int | None = None  # None: the catalog offers no choice of it
    default_home: int | None = None
    max_scratch: int | None = None
    default_scratch: int | None = None


class Catalog(_Strict):
    environments: list[Environment] = Field(min_length=1)
    gpu_classes: list[GpuClass] = Field(default_factory=list)
    resources: Resources = Resources()
    shared_memory: Memory = 1024**3
    storage: Storage = Storage()
    datasets: list[Dataset] = Field(default_factory=list)
    packages: Packages = Packages()
    policies: Policies = Policies()
    quotas: Quotas = Quotas()
    queueing: Queueing = Queueing()

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        problems: list[str] = []
        for kind, items in (
            ("environments", self.environments),
            ("gpu_classes", self.gpu_classes),
            ("datasets", self.datasets),
        ):
            seen: set[str] = set()
            for index, item in enumerate(items):
                if item.id in seen:
                    problems.append(f"{kind}[{index}].id: duplicate id '{item.id}'")
                seen.add(item.id)
        known = {
            "environments": {e.id for e in self.environments},
            "gpu_classes": {g.id for g in self.gpu_classes},
            "datasets": {d.id for d in self.datasets},
        }
        named = [("policies.everyone", self.policies.everyone)] + [
            (f"policies.groups.{printable(name)}", policy) for name, policy in self.policies.groups.items()
        ]
        for where, policy in named:
            for field, ids in known.items():
                chosen = getattr(policy, field)
                if chosen == "*":
                    continue
                for index, ref in enumerate(chosen):
                    if ref not in ids:
                        allowed = ", ".join(sorted(ids)) or "none defined"
                        problems.append(
                            f"{where}.{field}[{index}]: unknown {_KIND[field]} '{clip(str(ref), 80)}' "
                            f"(defined: {allowed})"
                        )
        totals = [(f"{where}.totals", p.totals) for where, p in named if p.totals is not None]
        totals += [(f"quotas.groups.{printable(name)}", t) for name, t in self.quotas.groups.items()]
        for where, total in totals:
            for gpu_id in total.max_gpus_per_class:
                if gpu_id not in known["gpu_classes"]:
                    problems.append(
                        f"{where}.max_gpus_per_class.{printable(gpu_id)}: unknown GPU class '{clip(gpu_id, 80)}' "
                        f"(defined: {', '.join(sorted(known['gpu_classes'])) or 'none defined'})"
                    )
        for gpu_id in self.queueing.capacity:
            if gpu_id not in known["gpu_classes"]:
                problems.append(
                    f"queueing.capacity.{printable(gpu_id)}: unknown GPU class '{clip(gpu_id, 80)}' "
                    f"(defined: {', '.join(sorted(known['gpu_classes'])) or 'none defined'})"
                )
        problems += _mount_collisions(self.datasets)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- lookups ------------------------------------------------------------------------

    def environment(self, env_id: str) -> Environment:
        return next(e for e in self.environments if e.id == env_id)

    def gpu_class(self, gpu_id: str) -> GpuClass:
        return next(g for g in self.gpu_classes if g.id == gpu_id)

    def dataset(self, dataset_id: str) -> Dataset:
        return next(d for d in self.datasets if d.id == dataset_id)

    def policies_for(self, groups: Iterable[str]) -> list[Policy]:
        """The policies that apply to a user in ``groups``: 'everyone' and each group's own."""
        groups = set(groups)
        return [self.policies.everyone] + [p for name, p in self.policies.groups.items() if name in groups]

    def allowance(self, groups: Iterable[str]) -> Allowance:
        """The most permissive value of each field over the user's groups and 'everyone'."""
        groups = set(groups)
        policies = self.policies_for(groups)

        def union(field: str, all_ids: list[str]) -> tuple[str, ...]:
            chosen: set[str] = set()
            for policy in policies:
                value = getattr(policy, field)
                chosen.update(all_ids if value == "*" else value)
            return tuple(i for i in all_ids if i in chosen)  # keep catalog order

        dataset_ids = [d.id for d in self.datasets]
        granted = set(union("datasets", dataset_ids))
        granted.update(
            d.id for d in self.datasets if d.groups is None or groups.intersection(d.groups)
        )
        cpu = self.resources.cpu
        memory = self.resources.memory
        max_cpus = [p.max_cpu for p in policies if p.max_cpu is not None]
        max_mems = [p.max_memory for p in policies if p.max_memory is not None]
        max_cpu = min(max(max_cpus), cpu.max) if max_cpus else cpu.max
        max_memory = min(max(max_mems), memory.max) if max_mems else memory.max
        home, scratch = self.storage.home, self.storage.scratch
        max_home = _most([p.max_home for p in policies], home.max) if home else None
        max_scratch = _most([p.max_scratch for p in policies], scratch.max) if scratch else None
        return Allowance(
            environments=union("environments", [e.id for e in self.environments]),
            gpu_classes=union("gpu_classes", [g.id for g in self.gpu_classes]),
            datasets=tuple(i for i in dataset_ids if i in granted),
            max_gpus=max(p.max_gpus for p in policies),
            max_cpu=max_cpu,
            max_memory=max_memory,
            default_cpu=min(cpu.default, max_cpu),
            default_memory=min(memory.default, max_memory),
            max_home=max_home,
            default_home=min(home.default, max_home) if home and max_home is not None else None,
            max_scratch=max_scratch,
            default_scratch=min(scratch.default, max_scratch) if scratch and max_scratch is not None else None,
        )

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def from_data(cls, data: Any) -> Catalog:
        if not isinstance(data, dict):
            raise CatalogError(["catalog: the top level must be a mapping"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CatalogError(_describe(exc, data)) from None

    @classmethod
    def from_yaml(cls, text: str) -> Catalog:
        try:
            data = load_yaml(text, CATALOG_LIMITS)
        except LoadProblem as exc:
            raise CatalogError([f"catalog: {exc}"]) from None
        return cls.from_data(data)

    @classmethod
    def from_path(cls, path: str | Path) -> Catalog:
        try:
            with open(path, "rb") as f:  # bounded: the path may be a pipe or a device
                data = f.read(MAX_CATALOG_BYTES + 1)
        except OSError as exc:
            raise CatalogError([f"{path}: cannot read the catalog: {exc.strerror}"]) from None
        if len(data) > MAX_CATALOG_BYTES:
            raise CatalogError([f"{path}: the catalog is larger than {MAX_CATALOG_BYTES // 2**20} MiB"])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise CatalogError([f"{path}: line {line}: the catalog is not UTF-8 text "
                                f"(byte 0x{data[exc.start]:02x}); save it as UTF-8"]) from None
        return cls.from_yaml(text)


def _most(limits: list[int | None], ceiling: int) -> int:
    """The most permissive of the policies' limits (None: no limit of its own), within ``ceiling``."""
    given = [v for v in limits if v is not None]
    return min(max(given), ceiling) if given else ceiling


def _overlap(a: str, b: str) -> bool:
    """One path is the other or lies inside it: mounting both would hide one."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _mount_collisions(datasets: list[Dataset]) -> list[str]:
    problems = []
    for index, dataset in enumerate(datasets):
        path = dataset.path_in_pod
        where = f"datasets[{index}].mount_path"
        for own, what in OWN_MOUNTS.items():
            if _overlap(path, own):
                problems.append(f"{where}: '{path}' overlaps {own} ({what}), so one would hide the "
                                f"other, use a path such as /datasets/{dataset.id}")
        for other_index, other in enumerate(datasets[:index]):
            if _overlap(path, other.path_in_pod):
                problems.append(f"{where}: '{path}' overlaps the mount path '{other.path_in_pod}' of "
                                f"datasets[{other_index}] ('{other.id}')")
    return problems


def _describe(exc: ValidationError, data: Any) -> list[str]:
    """One line per problem: where it is (``gpu_classes[1].max_count``) and what is wrong."""
    lines = []
    for error in exc.errors(include_url=False):
        parts: list[str] = []
        for item in input_path(error["loc"], data):
            if isinstance(item, int):
                parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
            else:
                parts.append(str(item))
        where = ".".join(parts) or "catalog"
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            if where == "catalog":  # cross-reference checks: one problem per line
                lines.extend(message.split("; "))
            else:
                lines.append(f"{where}: {message}")
    return lines
