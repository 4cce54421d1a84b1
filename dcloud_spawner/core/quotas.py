"""Quotas across servers: what a user, and a group, may hold at once.

Per-server maxima live in the policies and are checked by ``validation.validate``. This
module adds totals over all running (and starting) servers: per user (from the user's
policies, most permissive wins) and per group (``quotas.groups`` in the catalog). Every
spawn claims its resources in one hub-wide ledger, checking and recording in one step,
so racing spawns can never together exceed a quota; stops and failed starts release it.

Home volumes are the exception: they persist while their servers are stopped, so
``quotas.groups.<g>.max_home`` sums every volume that exists (:class:`HomeVolumes`), not
the running servers. A volume counts for the groups its owner had at its last start.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import refusals
from .catalog import Catalog
from .errors import QuotaExceeded
from .plan import Plan
from .quantity import format_memory


@dataclass(frozen=True)
class Claim:
    """What one server holds."""

    user: str
    server: str
    groups: tuple[str, ...]
    gpu_class: str | None
    gpus: int
    cpu: float
    memory: int
    scratch: int = 0

    @classmethod
    def of(cls, user: str, server: str, groups: Iterable[str], plan: Plan) -> Claim:
        return cls(user, server, tuple(sorted(groups)), plan.gpu_id, plan.gpu_count, plan.cpu_limit,
                   plan.memory_limit, plan.scratch_bytes or 0)

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.server)


@dataclass(frozen=True)
class Totals:
    servers: int
    gpus: int
    gpus_by_class: dict[str, int]
    cpu: float
    memory: int
    scratch: int = 0

    @classmethod
    def of(cls, claims: Iterable[Claim]) -> Totals:
        claims = list(claims)
        by_class: Counter[str] = Counter()
        for c in claims:
            if c.gpu_class:
                by_class[c.gpu_class] += c.gpus
        return cls(len(claims), sum(c.gpus for c in claims), dict(by_class), sum(c.cpu for c in claims),
                   sum(c.memory for c in claims), sum(c.scratch for c in claims))

    def describe(self) -> str:
        if self.servers == 0:
            return "nothing yet"
        gpus = "no GPU"
        if self.gpus:
            detail = ", ".join(f"{n} × {k}" for k, n in sorted(self.gpus_by_class.items()))
            gpus = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''} ({detail})"
        servers = f"{self.servers} server{'s' if self.servers > 1 else ''}"
        scratch = f" and {format_memory(self.scratch)} of scratch" if self.scratch else ""
        return f"{servers} with {gpus}, {self.cpu:g} CPU and {format_memory(self.memory)}{scratch}"


@dataclass(frozen=True)
class Limits:
    """Totals one holder (a user or a group) may reach; None means no limit."""

    gpus: int | None
    gpus_by_class: dict[str, int]
    cpu: float | None
    memory: int | None
    scratch: int | None = None


def user_limits(catalog: Catalog, groups: Iterable[str]) -> Limits:
    """The most permissive per-user totals over 'everyone' and the user's groups."""
    quotas = [p.totals for p in catalog.policies_for(groups) if p.totals is not None]
    if not quotas:
        return Limits(None, {}, None, None, None)

    def most(values: list) -> object:
        return None if any(v is None for v in values) else max(values)

    # a policy that names no limit for a class allows it up to its overall GPU total
    by_class: dict[str, int] = {}
    for gpu_class in {k for q in quotas for k in q.max_gpus_per_class}:
        allowed = [q.max_gpus_per_class.get(gpu_class, q.max_gpus) for q in quotas]
        if all(v is not None for v in allowed):
            by_class[gpu_class] = max(allowed)  # type: ignore[type-var]
    return Limits(
        gpus=most([q.max_gpus for q in quotas]),  # type: ignore[arg-type]
        gpus_by_class=by_class,
        cpu=most([q.max_cpu for q in quotas]),  # type: ignore[arg-type]
        memory=most([q.max_memory for q in quotas]),  # type: ignore[arg-type]
        scratch=most([q.max_scratch for q in quotas]),  # type: ignore[arg-type]
    )


def group_limits(catalog: Catalog, group: str) -> Limits | None:
    quota = catalog.quotas.groups.get(group)
    if quota is None:
        return None
    return Limits(quota.max_gpus, dict(quota.max_gpus_per_class), quota.max_cpu, quota.max_memory,
                  quota.max_scratch)


def _exceeded(limits: Limits, held: Totals, claim: Claim) -> list[str]:
    """What ``claim`` on top of ``held`` would exceed, as short phrases."""
    over = []
    if limits.gpus is not None and claim.gpus and held.gpus + claim.gpus > limits.gpus:
        over.append(f"{limits.gpus} GPU{'s' if limits.gpus != 1 else ''} in total")
    if claim.gpu_class and claim.gpu_class in limits.gpus_by_class:
        cap = limits.gpus_by_class[claim.gpu_class]
        if held.gpus_by_class.get(claim.gpu_class, 0) + claim.gpus > cap:
            over.append(f"{cap} × {claim.gpu_class}")
    if limits.cpu is not None and held.cpu + claim.cpu > limits.cpu + 1e-9:
        over.append(f"{limits.cpu:g} CPU")
    if limits.memory is not None and held.memory + claim.memory > limits.memory:
        over.append(f"{format_memory(limits.memory)} of memory")
    if limits.scratch is not None and claim.scratch and held.scratch + claim.scratch > limits.scratch:
        over.append(f"{format_memory(limits.scratch)} of scratch")
    return over


def _room(limits: Limits, held: Totals) -> str:
    parts = []
    if limits.gpus is not None:
        parts.append(f"{max(0, limits.gpus - held.gpus)} GPU(s)")
    if limits.cpu is not None:
        parts.append(f"{max(0.0, limits.cpu - held.cpu):g} CPU")
    if limits.memory is not None:
        parts.append(format_memory(max(0, limits.memory - held.memory)))
    if limits.scratch is not None:
        parts.append(f"{format_memory(max(0, limits.scratch - held.scratch))} of scratch")
    return ", ".join(parts) or "no more"


def check(catalog: Catalog, claims: Iterable[Claim], claim: Claim) -> None:
    """Raise QuotaExceeded when ``claim`` would take a user or group over a quota."""
    others = [c for c in claims if c.key != claim.key]
    mine = Totals.of(c for c in others if c.user == claim.user)
    limits = user_limits(catalog, claim.groups)
    over = _exceeded(limits, mine, claim)
    if over:
        raise QuotaExceeded(
            f"Quota: you already run {mine.describe()}; with this server you would exceed "
            f"{' and '.join(over)}, so you may still ask for {_room(limits, mine)}."
        )
    for group in claim.groups:
        glimits = group_limits(catalog, group)
        if glimits is None:
            continue
        if catalog.queueing.enabled:
            # GPU, CPU and memory quotas of groups are Kueue's (its ClusterQueues), cluster-wide;
            # scratch disk Kueue does not ration, so the hub keeps that one
            glimits = Limits(None, {}, None, None, glimits.scratch)
        held = Totals.of(c for c in others if group in c.groups)
        over = _exceeded(glimits, held, claim)
        if over:
            raise QuotaExceeded(
                f"Quota of group '{group}': its members already run {held.describe()}; with this "
                f"server the group would exceed {' and '.join(over)}, so it may still use "
                f"{_room(glimits, held)}."
            )


class Ledger:
    """Claims of all servers of this hub, shared by every spawner in the hub."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, str], Claim] = {}

    @property
    def claims(self) -> list[Claim]:
        return list(self._claims.values())

    def claim(self, catalog: Catalog, claim: Claim) -> None:
        """Record ``claim``, or raise QuotaExceeded and record nothing.

        Deliberately not a coroutine: the check and the record happen in one step of the
        hub's event loop, so no other spawn can claim in between. Making this await
        anything between the two would let racing spawns over-allocate (the tests race it).
        """
        check(catalog, self._claims.values(), claim)
        self._claims[claim.key] = claim

    def adopt(self, claim: Claim) -> None:
        """Record a server that was already running when the hub (re)started."""
        self._claims[claim.key] = claim

    def release(self, user: str, server: str) -> None:
        self._claims.pop((user, server), None)

    def clear(self) -> None:
        self._claims.clear()


VolumeKey = tuple[str, str]  # a claim's namespace and name
Holder = tuple[str, str]  # the (user, server) whose start recorded a claim


@dataclass(frozen=True)
class HomeVolume:
    """One home volume: its claim's namespace and name, the groups with a ``max_home`` its owner
    had at its last start, and its size."""

    namespace: str
    name: str
    groups: tuple[str, ...]
    size: int

    @property
    def key(self) -> VolumeKey:
        return (self.namespace, self.name)


def check_home(catalog: Catalog, volumes: Iterable[HomeVolume], volume: HomeVolume, most: int | None = None) -> None:
    """Raise QuotaExceeded when ``volume`` grows its owner's groups past their ``max_home``;
    ``most`` is the owner's own largest home (their policies' ``max_home``), if any.

    A start that does not grow its volume is never refused: the group's sum does not change
    (and refusing would keep the owner from their files, e.g. after the quota was lowered)."""
    volumes = list(volumes)
    current = next((v.size for v in volumes if v.key == volume.key), 0)
    if volume.size <= current:
        return
    rooms = []
    for group in volume.groups:
        quota = catalog.quotas.groups.get(group)
        if quota is None or quota.max_home is None:
            continue
        held = sum(v.size for v in volumes if v.key != volume.key and group in v.groups)
        rooms.append((quota.max_home - held, group, held, quota.max_home))
    if not rooms:
        return
    # the group with the least room: refused there if anywhere, and what it leaves fits every group
    _, group, held, max_home = min(rooms)
    if held + volume.size > max_home:
        raise refusals.group_home_quota(group, held, max_home, volume.size, current, most)


class HomeVolumes:
    """The home volumes of the hub's users, by claim, shared by every spawner in the hub.

    Before each claim the backend lists the volumes of a namespace (:meth:`seen`). A start's
    claim (:meth:`record`) is made before its volume is created or grown, later in the start, so
    it is kept over the listings until one shows the volume at least at its size and with its
    groups, or until its start has ended (:meth:`release`) and a listing begun since shows what
    that start left."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._listed: dict[VolumeKey, HomeVolume] = {}
        self._claims: dict[Holder, HomeVolume] = {}  # recorded by starts, not yet shown by a listing
        self._released: dict[Holder, float] = {}  # when the start that recorded it ended

    @property
    def volumes(self) -> list[HomeVolume]:
        """What counts: the listed volumes, with the claims no listing has shown laid over them
        (the larger size, and the groups of both: never less than either)."""
        merged = dict(self._listed)
        for claim in self._claims.values():
            known = merged.get(claim.key)
            if known is not None:
                claim = HomeVolume(claim.namespace, claim.name, tuple(sorted({*known.groups, *claim.groups})),
                                   max(known.size, claim.size))
            merged[claim.key] = claim
        return list(merged.values())

    def now(self) -> float:
        """The time to pass to :meth:`seen` for a listing that begins now."""
        return self._clock()

    def seen(self, namespace: str, listed: Iterable[HomeVolume], since: float) -> None:
        """What a listing of ``namespace`` begun at ``since`` found replaces what was known there."""
        self._listed = {k: v for k, v in self._listed.items() if k[0] != namespace}
        self._listed.update((v.key, v) for v in listed if v.namespace == namespace)
        for holder, claim in list(self._claims.items()):
            if claim.namespace != namespace:
                continue
            shown = self._listed.get(claim.key)
            made = shown is not None and shown.size >= claim.size and set(claim.groups) <= set(shown.groups)
            ended = self._released.get(holder)
            if made or (ended is not None and ended <= since):
                del self._claims[holder]
                self._released.pop(holder, None)

    def claim(self, catalog: Catalog, volume: HomeVolume, holder: Holder, most: int | None = None) -> None:
        """Check and record ``volume`` in one step (not a coroutine, as :meth:`Ledger.claim`)."""
        self.check(catalog, volume, most)
        self.record(volume, holder)

    def check(self, catalog: Catalog, volume: HomeVolume, most: int | None = None) -> None:
        check_home(catalog, self.volumes, volume, most)

    def record(self, volume: HomeVolume, holder: Holder) -> None:
        """Count ``volume`` as ``holder``'s start will leave it."""
        known = next((v for v in self.volumes if v.key == volume.key), None)
        size = max(volume.size, known.size) if known is not None else volume.size  # it only grows
        self._claims[holder] = HomeVolume(volume.namespace, volume.name, volume.groups, size)
        self._released.pop(holder, None)

    def release(self, holder: Holder) -> None:
        """``holder``'s start has ended (failed or stopped): the next listing begun from now on
        decides whether its volume exists, and how large."""
        if holder in self._claims:
            self._released[holder] = self._clock()
