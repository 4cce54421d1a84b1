"""Everything DCloud shares across the spawners of one hub process, in one object.

JupyterHub makes one spawner object per server, but some things exist once per hub: the
catalog cache, the quota ledger, the refused form submissions kept for a re-render, the
metrics, and each backend's live data (the Kubernetes watch caches, the local machine's
GPUs). They live in one :class:`HubState`, created when the first spawner asks for it,
and dropped with :func:`close_hub_state` (waits for background work to stop) or
:func:`reset_hub_state` (from synchronous code: cancels it).
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from traitlets.log import get_logger

from ..core.availability import GpuAvailability
from ..core.catalog import Catalog, CatalogError
from ..core.quotas import Ledger
from . import audit
from .metrics import Metrics

T = TypeVar("T")


class LiveData(Protocol):
    """A backend's view of what is free now (the form, admin page and metrics read it)."""

    async def refresh(self) -> None:
        """Make sure the data is being gathered (start watches, discover devices)."""

    def availability(self, catalog: Catalog) -> dict[str, GpuAvailability] | None:
        """GPU class id -> free and total now; None when not known."""


class BackgroundWork(abc.ABC):
    """A hub-wide part that works in the background (a watch, a poller): the hub state stops
    it when it is closed and cancels it when it is abandoned."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the background work and wait for it."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Cancel the background work without waiting (from synchronous code)."""


class QueueData(Protocol):
    """A backend's view of its queues (Kueue): for the admin page and the metrics."""

    def rows(self, catalog: Catalog) -> list[Any]:
        """One row per queue: name, pending, admitted, gpus_admitted by class."""

    def queued_gpus(self, catalog: Catalog) -> dict[str, int]:
        """GPU class id -> GPUs asked for by waiting workloads."""


class CatalogCache:
    """Loads a catalog file once and again only when the file changes (admins edit it live).

    A file edited into an invalid catalog while the hub runs does not take the hub down:
    the last valid catalog stays in use, one warning per change of the file says what is
    wrong, and :meth:`error` tells the admin page. A catalog that was never valid raises.
    """

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> None:
        self.log = log or get_logger()  # JupyterHub's own log once the hub runs
        self._cache: dict[str, tuple[float | None, Catalog]] = {}  # the last valid one per path
        self._errors: dict[str, tuple[float | None, CatalogError]] = {}  # a broken file, by mtime

    def get(self, path: str) -> Catalog:
        try:
            mtime: float | None = os.stat(path).st_mtime
        except OSError:
            mtime = None  # gone or unreadable, e.g. mid-way through an editor's save
        cached = self._cache.get(path)
        if cached and cached[0] == mtime:
            self._fixed(path)  # e.g. the good file copied back with its old time
            return cached[1]
        broken = self._errors.get(path)
        if cached and broken and broken[0] == mtime:
            return cached[1]  # already said so for this version of the file
        try:
            catalog = Catalog.from_path(path)
        except CatalogError as exc:
            if cached is None:
                raise  # never valid: nothing good to fall back on
            self._errors[path] = (mtime, exc)
            self.log.warning("DCloud catalog %s is invalid; still using the last valid one until it is "
                             "fixed: %s", path, "; ".join(exc.errors))
            return cached[1]
        self._cache[path] = (mtime, catalog)
        self._fixed(path)
        return catalog

    def _fixed(self, path: str) -> None:
        if self._errors.pop(path, None) is not None:
            self.log.info("DCloud catalog %s is valid again and in use.", path)

    def error(self, path: str) -> str | None:
        """What is wrong with the file at ``path`` while an older valid catalog is served."""
        broken = self._errors.get(path)
        return "; ".join(broken[1].errors) if broken else None


class FormAttempts:
    """The last refused form submission per user, so the re-rendered form keeps the choices.

    Per user, not per spawner: JupyterHub re-renders a refused named-server form through the
    user's default spawner. Kept only for that immediate re-render.
    """

    def __init__(self, keep_seconds: float = 30) -> None:
        self.keep_seconds = keep_seconds
        self._attempts: dict[str, tuple[float, dict[str, Any]]] = {}

    def remember(self, user: str, options: dict[str, Any]) -> None:
        self._attempts[user] = (time.monotonic(), options)

    def take(self, user: str) -> dict[str, Any] | None:
        stamp, options = self._attempts.pop(user, (0.0, None))
        return options if time.monotonic() - stamp <= self.keep_seconds else None

    def forget(self, user: str) -> None:
        self._attempts.pop(user, None)


class HubState:
    """The hub-wide parts; see the module docstring."""

    def __init__(self) -> None:
        self.catalogs = CatalogCache()
        self.attempts = FormAttempts()
        self.ledger = Ledger()
        self.catalog_path: str | None = None  # the spawners' configured catalog
        self.live: LiveData | None = None  # the running backend's live data
        self.queues: QueueData | None = None  # the running backend's queues, when it queues
        self._parts: dict[type, Any] = {}
        audit.install_handler()
        self.metrics = Metrics(self.current_numbers, lambda: self.ledger.claims)
        self.metrics.gpus.queued = self.queued_numbers

    def part(self, kind: type[T], factory: Callable[[], T]) -> T:
        """The backend's hub-wide object of type ``kind`` (one per type), made by ``factory``
        on first use. A :class:`BackgroundWork` part is stopped with the state."""
        made = self._parts.get(kind)
        if made is None:
            made = self._parts[kind] = factory()
            if not isinstance(made, kind):
                raise TypeError(f"{factory!r} made a {type(made).__name__}, not a {kind.__name__}")
        return made

    def serve(self, catalog_path: str, live: LiveData | None = None) -> None:
        """Say which catalog (and live data) this hub's spawners use, for the admin page and
        the metrics; called as a spawner is made and as a backend makes its live data."""
        self.catalog_path = catalog_path
        if live is not None:
            self.live = live

    def catalog(self) -> Catalog | None:
        return self.catalogs.get(self.catalog_path) if self.catalog_path else None

    def current_numbers(self) -> tuple[Catalog, dict[str, GpuAvailability] | None] | None:
        """The catalog and live availability, for metrics and the admin page."""
        catalog = self.catalog()
        if catalog is None:
            return None
        return catalog, self.live.availability(catalog) if self.live is not None else None

    def queued_numbers(self) -> dict[str, int] | None:
        """GPUs waiting in line by class; None where nothing queues."""
        catalog = self.catalog()
        if catalog is None or self.queues is None or not catalog.queueing.enabled:
            return None
        return self.queues.queued_gpus(catalog)

    async def close(self) -> None:
        """Stop what the parts run in the background and unregister the metrics."""
        for part in self._parts.values():
            if isinstance(part, BackgroundWork):
                await part.stop()
        self.metrics.unregister()

    def abandon(self) -> None:
        """Cancel the parts' background work without waiting for it, and unregister the metrics."""
        for part in self._parts.values():
            if isinstance(part, BackgroundWork):
                part.cancel()
        self.metrics.unregister()


_current: HubState | None = None


def hub_state() -> HubState:
    """This hub's shared state, created on first use."""
    global _current
    if _current is None:
        _current = HubState()
    return _current


async def close_hub_state() -> None:
    """Drop the hub's shared state after stopping its background work; the next use starts afresh."""
    global _current
    state, _current = _current, None
    if state is not None:
        await state.close()


def reset_hub_state() -> None:
    """Drop the hub's shared state now, cancelling its background work; the next use starts afresh."""
    global _current
    state, _current = _current, None
    if state is not None:
        state.abandon()
