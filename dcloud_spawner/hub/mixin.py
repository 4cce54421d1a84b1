"""What every DCloud backend shares: the catalog, the form, and the one validation gate.

``DCloudMixin`` sits in front of a JupyterHub Spawner (KubeSpawner or the local
process spawner). It owns JupyterHub's three option hooks:

- ``options_form``: the form, for this user's groups, pre-filled;
- ``options_from_form``: form fields + uploaded file -> validated, normalised options;
- ``apply_user_options``: every start (form, REST, stored options) -> ``self.dcloud_plan``.

A backend reads ``self.dcloud_plan`` in ``start`` and nothing else of the request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from tornado import web
from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from . import metrics, quota
from .catalog import Catalog
from .form import FormContext, render_form, request_from_form, uploaded_options
from .plan import Plan
from .request import RequestError
from .validation import validate

audit_log = logging.getLogger("dcloud.audit")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not at import)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


if not audit_log.handlers:  # one bare JSON object per line, whatever the hub's log format
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(_handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


class CatalogCache:
    """Loads a catalog file once and again only when the file changes (admins edit it live)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, Catalog]] = {}

    def get(self, path: str) -> Catalog:
        mtime = os.stat(path).st_mtime
        cached = self._cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        catalog = Catalog.from_path(path)
        self._cache[path] = (mtime, catalog)
        return catalog


_catalogs = CatalogCache()
# The last refused form submission per user, so the re-rendered form keeps their choices.
# Per user, not per spawner: JupyterHub re-renders a refused named-server form through the
# user's default spawner. Kept only for that immediate re-render.
_attempts: dict[str, tuple[float, dict[str, Any]]] = {}
ATTEMPT_SECONDS = 30


class DCloudMixin(LoggingConfigurable):
    """Catalog, form and validation for a JupyterHub Spawner (mix in before the Spawner)."""

    catalog_path = Unicode(
        "/etc/dcloud/catalog.yaml",
        config=True,
        help="""Path of the admin's catalog (YAML): environments, GPU classes, resources,
        datasets, package settings and group policies. Re-read when the file changes.
        Check it with `dcloud check PATH`.""",
    )

    dcloud_plan: Plan | None = None

    # -- inputs -----------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return _catalogs.get(self.catalog_path)

    def user_groups(self) -> list[str]:
        """The JupyterHub groups of this spawner's user (filled by the authenticator)."""
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    def validate_options(self, options: Any) -> Plan:
        """The one gate: options -> Plan for this user, or RequestError."""
        return validate(options, self.catalog, self.user_groups())

    # -- JupyterHub hooks ---------------------------------------------------------------

    def form_context(self) -> FormContext:
        """Live data for the form; backends override to add availability and notices."""
        return FormContext()

    def metrics_source(self) -> tuple[Catalog, Any]:
        """What /hub/metrics reports: the catalog and the live availability, if known."""
        return self.catalog, self.form_context().availability

    async def refresh_live_data(self) -> None:
        """Make sure live data (availability) is being watched; backends override."""

    def check_capacity(self, plan: Plan) -> None:
        """Refuse (RequestError) a plan that cannot fit right now; backends override."""

    async def dcloud_options_form(self, spawner: Any = None) -> str:
        catalog = self.catalog
        allowance = catalog.allowance(self.user_groups())
        await self.refresh_live_data()
        stamp, options = _attempts.pop(self.user.name, (0.0, None))
        if options is None or time.monotonic() - stamp > ATTEMPT_SECONDS:
            options = self.user_options or {}
            try:
                self.validate_options(options)
            except RequestError:
                options = {}  # stale or never valid: start from the defaults
        return render_form(catalog, allowance, options, self.form_context())

    def dcloud_options_from_form(self, formdata: dict[str, list[Any]]) -> dict[str, Any]:
        raw = request_from_form(formdata)
        _attempts[self.user.name] = (time.monotonic(), raw)
        try:
            uploaded = uploaded_options(formdata)
            if uploaded:  # a file replaces the form's fields entirely (the form says so)
                raw = uploaded
                _attempts[self.user.name] = (time.monotonic(), raw)
            plan = self.validate_options(raw)
        except RequestError as exc:
            metrics.SPAWNS_REFUSED.labels(reason="validation").inc()
            self.audit("refused", raw, reason=exc.sentence)
            raise
        _attempts.pop(self.user.name, None)
        return plan.user_options()

    async def dcloud_apply_user_options(self, spawner: Any, user_options: dict) -> None:
        """Validate, then claim the plan's resources against the quotas (atomically)."""
        stage = "validation"
        try:
            plan = self.validate_options(user_options)
            stage = "capacity"
            await self.refresh_live_data()
            self.check_capacity(plan)
            stage = "quota"
            await self.claim_resources(plan)
        except (RequestError, quota.QuotaExceeded) as exc:
            metrics.SPAWNS_REFUSED.labels(reason=stage).inc()
            # JupyterHub stored these options before asking us; put back the last good ones
            # so a bad REST call cannot poison the next form or restart.
            previous = getattr(self, "_dcloud_last_valid", None) or {}
            self.user_options = previous
            orm = getattr(self, "orm_spawner", None)
            if orm is not None:
                orm.user_options = previous
            self.audit("refused", user_options, reason=exc.sentence)
            error = web.HTTPError(400, exc.sentence)
            error.jupyterhub_message = exc.sentence  # type: ignore[attr-defined]
            raise error from None
        self.dcloud_plan = plan
        self.user_options = plan.user_options()
        self._dcloud_last_valid = self.user_options

    # -- quotas -----------------------------------------------------------------------

    @property
    def claim_key(self) -> tuple[str, str]:
        return (self.user.name, getattr(self, "name", "") or "")

    async def claim_resources(self, plan: Plan) -> None:
        """Hold ``plan``'s resources in the hub-wide ledger, or raise QuotaExceeded."""
        claim = quota.Claim.of(*self.claim_key, self.user_groups(), plan)
        await quota.ledger.claim(self.catalog, claim)

    def release_resources(self) -> None:
        quota.ledger.release(*self.claim_key)

    def dcloud_state(self) -> dict[str, Any]:
        """State to persist while a server runs, so a restarted hub re-counts it."""
        return {"dcloud_options": self.dcloud_plan.user_options()} if self.dcloud_plan else {}

    def load_dcloud_state(self, state: dict[str, Any]) -> None:
        options = state.get("dcloud_options")
        if not options:
            return
        try:
            plan = self.validate_options(options)
        except (RequestError, OSError, ValueError):
            return  # the catalog changed under a running server; it is counted no longer
        self.dcloud_plan = plan
        quota.ledger.adopt(quota.Claim.of(*self.claim_key, self.user_groups(), plan))

    # -- audit ------------------------------------------------------------------------

    def audit(self, event: str, options: Any, **fields: Any) -> None:
        """One JSON line per spawn, refusal and stop: who, what was asked, the outcome."""
        record = {
            "event": event,
            "user": getattr(self.user, "name", None),
            "server": getattr(self, "name", ""),
            "groups": self.user_groups(),
            "requested": _json_safe(options),
            **fields,
        }
        audit_log.info(json.dumps(record, sort_keys=True, default=str))


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:500]


def install_hooks(spawner: Any) -> None:
    """Point JupyterHub's option hooks at DCloud's unless the admin configured their own,
    and make /hub/metrics report this backend's numbers."""
    if metrics.collector.source is None:
        metrics.collector.source = spawner.metrics_source
    config = spawner.config
    section = {k for cls in type(spawner).mro() for k in config.get(cls.__name__, {})}
    if "options_form" not in section:
        spawner.options_form = spawner.dcloud_options_form
    if "options_from_form" not in section:
        spawner.options_from_form = spawner.dcloud_options_from_form
    if "apply_user_options" not in section:
        spawner.apply_user_options = spawner.dcloud_apply_user_options
