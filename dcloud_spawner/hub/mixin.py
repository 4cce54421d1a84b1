"""What every DCloud backend shares: the catalog, the form, and the one validation gate.

``DCloudMixin`` sits in front of a JupyterHub Spawner (KubeSpawner or the local
process spawner). It gives JupyterHub's three option hooks their defaults (an admin's
own ``c.Spawner.options_form`` etc. still wins, as with any trait default):

- ``options_form``: the form, for this user's groups, pre-filled;
- ``options_from_form``: form fields + uploaded file -> validated, normalised options;
- ``apply_user_options``: every start (form, REST, stored options) -> ``self.dcloud_plan``.

A backend reads ``self.dcloud_plan`` in ``start`` and nothing else of the request.
"""

from __future__ import annotations

import copy
from typing import Any

from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from ..core.catalog import Catalog
from ..core.errors import Refusal, RequestError
from ..core.plan import Plan
from ..core.quotas import Claim
from ..core.validation import validate
from . import audit
from .form import FormContext, render_form, request_from_form, uploaded_options
from .state import HubState, LiveData, hub_state


class SpawnRefused(SpawnException):
    """JupyterHub's SpawnException (status ``failure``, ``reason`` in its metrics) whose
    message the progress page shows as the bare sentence, without the exception's name."""

    @property
    def jupyterhub_message(self) -> str:
        return self.message

    @classmethod
    def of(cls, refusal: Refusal) -> SpawnRefused:
        return cls(refusal.sentence, reason=refusal.reason)


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
    _dcloud_last_valid: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # JupyterHub builds a spawner from the options stored in its database: those of the last
        # accepted start (a refused one puts them back). It overwrites them with a new request's
        # before apply_user_options, so keep them now: a refusal must not wipe them, even when
        # this object is new (after a stop, or a hub restart).
        self._dcloud_last_valid = copy.deepcopy(getattr(self, "user_options", None) or {})

    @default("options_form")
    def _dcloud_options_form_default(self) -> Any:
        return self.dcloud_options_form

    @default("options_from_form")
    def _dcloud_options_from_form_default(self) -> Any:
        return self.dcloud_options_from_form

    @default("apply_user_options")
    def _dcloud_apply_user_options_default(self) -> Any:
        return self.dcloud_apply_user_options

    # -- inputs -----------------------------------------------------------------------

    @property
    def hub_state(self) -> HubState:
        """The hub-wide state, told which catalog and live data this hub's spawners use."""
        state = hub_state()
        state.catalog_path = self.catalog_path
        live = self.live_data()
        if live is not None:
            state.live = live
        return state

    @property
    def catalog(self) -> Catalog:
        return self.hub_state.catalogs.get(self.catalog_path)

    def user_groups(self) -> list[str]:
        """The JupyterHub groups of this spawner's user (filled by the authenticator)."""
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    def validate_options(self, options: Any) -> Plan:
        """The one gate: options -> Plan for this user, or RequestError."""
        return validate(options, self.catalog, self.user_groups())

    # -- what backends add --------------------------------------------------------------

    def live_data(self) -> LiveData | None:
        """The backend's hub-wide view of free GPUs; None where it has none."""
        return None

    def form_context(self) -> FormContext:
        """Live data for the form; backends override to add notices."""
        live = self.live_data()
        return FormContext(availability=live.availability(self.catalog) if live else None)

    async def refresh_live_data(self) -> None:
        """Make sure live data (availability) is being gathered."""
        live = self.live_data()
        if live is not None:
            await live.refresh()

    def check_capacity(self, plan: Plan) -> None:
        """Refuse (CapacityRefusal) a plan that cannot fit right now; backends override."""

    # -- JupyterHub hooks ---------------------------------------------------------------

    async def dcloud_options_form(self, spawner: Any = None) -> str:
        catalog = self.catalog
        allowance = catalog.allowance(self.user_groups())
        await self.refresh_live_data()
        options = self.hub_state.attempts.take(self.user.name)
        if options is None:
            options = self.user_options or {}
            try:
                self.validate_options(options)
            except RequestError:
                options = {}  # stale or never valid: start from the defaults
        return render_form(catalog, allowance, options, self.form_context())

    def dcloud_options_from_form(self, formdata: dict[str, list[Any]]) -> dict[str, Any]:
        attempts = self.hub_state.attempts
        raw = request_from_form(formdata)
        attempts.remember(self.user.name, raw)
        try:
            uploaded = uploaded_options(formdata)
            if uploaded:  # a file replaces the form's fields entirely (the form says so)
                raw = uploaded
                attempts.remember(self.user.name, raw)
            plan = self.validate_options(raw)
        except RequestError as exc:
            self.refused(exc, raw)
            raise
        attempts.forget(self.user.name)
        return plan.user_options()

    async def dcloud_apply_user_options(self, spawner: Any, user_options: dict) -> None:
        """Validate, check capacity, then claim the plan's resources against the quotas."""
        try:
            plan = self.validate_options(user_options)
            await self.refresh_live_data()
            self.check_capacity(plan)
            self.claim_resources(plan)
        except Refusal as exc:
            # JupyterHub stored these options before asking us; put back the last good ones
            # so a bad REST call cannot poison the next form or restart.
            previous = copy.deepcopy(self._dcloud_last_valid or {})
            self.user_options = previous
            orm = getattr(self, "orm_spawner", None)
            if orm is not None:
                orm.user_options = previous
            self.refused(exc, user_options)
            error = web.HTTPError(400, exc.sentence)
            error.jupyterhub_message = exc.sentence  # type: ignore[attr-defined]
            raise error from None
        self.dcloud_plan = plan
        self.user_options = plan.user_options()
        self._dcloud_last_valid = copy.deepcopy(self.user_options)

    # -- quotas -----------------------------------------------------------------------

    @property
    def claim_key(self) -> tuple[str, str]:
        return (self.user.name, getattr(self, "name", "") or "")

    def claim_resources(self, plan: Plan) -> None:
        """Hold ``plan``'s resources in the hub-wide ledger, or raise QuotaExceeded."""
        self.hub_state.ledger.claim(self.catalog, Claim.of(*self.claim_key, self.user_groups(), plan))

    def release_resources(self) -> None:
        self.hub_state.ledger.release(*self.claim_key)

    def dcloud_state(self) -> dict[str, Any]:
        """State to persist while a server runs, so a restarted hub re-counts it."""
        return {"dcloud_options": self.dcloud_plan.user_options()} if self.dcloud_plan else {}

    def clear_state(self) -> None:
        """JupyterHub's reset after a stop and before a new start: the plan ended with the server
        (else the state stored after a stop would hold its claim, adopted again when reloaded)."""
        super().clear_state()  # type: ignore[misc]
        self.dcloud_plan = None

    def load_dcloud_state(self, state: dict[str, Any]) -> None:
        options = state.get("dcloud_options")
        if not options:
            return
        try:
            plan = self.validate_options(options)
        except (RequestError, OSError, ValueError):
            return  # the catalog changed under a running server; it is counted no longer
        self.dcloud_plan = plan
        self.hub_state.ledger.adopt(Claim.of(*self.claim_key, self.user_groups(), plan))

    # -- audit and metrics ----------------------------------------------------------------

    def refused(self, refusal: Refusal, options: Any, **fields: Any) -> None:
        """Count a refusal by its reason and write its audit line."""
        self.hub_state.metrics.refused(refusal.reason)
        self.audit("refused", options, reason=refusal.sentence, **fields)

    def audit(self, event: str, options: Any, **fields: Any) -> None:
        """One JSON line per spawn, refusal and stop: who, what was asked, the outcome."""
        audit.record(event, getattr(self.user, "name", None), getattr(self, "name", ""),
                     self.user_groups(), options, **fields)
