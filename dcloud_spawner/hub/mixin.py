"""What every DCloud backend shares: the catalog, the form, and the one validation gate.

``DCloudMixin`` sits in front of a JupyterHub Spawner (KubeSpawner or the local
process spawner). It gives JupyterHub's three option hooks their defaults (an admin's
own ``c.Spawner.options_form`` etc. still wins, as with any trait default):

- ``options_form``: the form, for this user's groups, pre-filled;
- ``options_from_form``: form fields + uploaded file -> validated, normalised options;
- ``apply_user_options``: every start (form, REST, stored options) -> ``self.dcloud_plan``.

**The catalog gate always runs.** An admin's own ``options_from_form`` shapes the request
and an admin's own ``apply_user_options`` (callable or dict) runs first, on the options as
sent; the catalog gate then runs on them all the same, so nothing reaches a server that the
catalog did not allow. Fields the admin's own hooks handle are declared in
``extra_option_fields`` (a dict-form ``apply_user_options`` declares its keys itself); the
gate leaves them to those hooks and refuses any other field it does not know.

**Every refusal leaves through** :meth:`DCloudMixin.refuse`: it counts the refusal in
``dcloud_spawns_refused_total{reason}``, writes its audit line and raises :class:`SpawnRefused`,
JupyterHub's own ``SpawnException``: a 400 whose body is the one sentence, and whose
``reason`` JupyterHub puts in ``server_spawn_duration_seconds{status="failure", reason}``
(a bare ``HTTPError`` would be relabelled ``error`` by ``User.spawn``). Sentences live in
``core/`` (``core/refusals.py`` and the rules' own modules).

A backend reads ``self.dcloud_plan`` in ``start`` and nothing else of the request.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, NoReturn

import traitlets
from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..core import refusals
from ..core.catalog import Catalog
from ..core.errors import Refusal, RequestError
from ..core.plan import Plan
from ..core.quotas import Claim
from ..core.validation import validate
from . import audit
from .form import FormContext, render_form, request_from_form, uploaded_options
from .state import LiveData, hub_state

_THIS_START = object()  # refuse()'s default: audit the options of the start being refused


class SpawnRefused(SpawnException):
    """JupyterHub's SpawnException (status ``failure``, ``reason`` in its metrics) whose
    message the progress page shows as the bare sentence, without the exception's name."""

    @property
    def jupyterhub_message(self) -> str:
        return self.message

    @classmethod
    def of(cls, refusal: Refusal) -> SpawnRefused:
        return cls(refusal.sentence, reason=refusal.reason)


def _apply_by_mapping(spawner: Any, mapping: dict[str, str], user_options: dict) -> None:
    """JupyterHub's dict form of ``apply_user_options``: option field -> spawner attribute,
    strings coerced by the trait where a plain assignment fails."""
    traits = spawner.traits()
    for field, attr in mapping.items():
        if field not in user_options or not hasattr(spawner, attr):
            continue
        value = user_options[field]
        try:
            setattr(spawner, attr, value)
        except Exception:
            if attr not in traits or not isinstance(value, str):
                raise
            setattr(spawner, attr, traits[attr].from_string(value))


class DCloudMixin(LoggingConfigurable):
    """Catalog, form and validation for a JupyterHub Spawner (mix in before the Spawner)."""

    catalog_path = Unicode(
        "/etc/dcloud/catalog.yaml",
        config=True,
        help="""Path of the admin's catalog (YAML): environments, GPU classes, resources,
        datasets, package settings and group policies. Re-read when the file changes.
        Check it with `dcloud check PATH`.""",
    )

    extra_option_fields = List(
        Unicode(),
        config=True,
        help="""user_options fields that the site's own hooks handle (an admin's own
        `options_from_form` and `apply_user_options`): the catalog gate leaves them to
        those hooks and keeps them in the stored options; any other field it does not know
        is refused. A dict-form `apply_user_options` declares its keys itself. The catalog
        still owns its own fields (environment, GPUs, CPU, memory, datasets, packages).""",
    )

    package_install_args = List(
        Unicode(),
        config=True,
        help="""Extra pip arguments for installing users' extra packages (the Kubernetes
        backend's package init container, the local backend's pip), set by the admin (e.g.
        ["--trusted-host", "pypi.internal"]). Users can never add pip options.""",
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
        hub_state().serve(self.catalog_path)  # the admin page and metrics read this catalog
        if self.apply_user_options is None:
            # traitlets neither validates nor reports a None equal to the trait's own default:
            # no hook at all still means the catalog's gate (so does a later None, observed)
            self.apply_user_options = self.dcloud_apply_user_options

    @default("options_form")
    def _dcloud_options_form_default(self) -> Any:
        return self.dcloud_options_form

    @default("options_from_form")
    def _dcloud_options_from_form_default(self) -> Any:
        return self.dcloud_options_from_form

    @default("apply_user_options")
    def _dcloud_apply_user_options_default(self) -> Any:
        return self.dcloud_apply_user_options

    @traitlets.validate("apply_user_options")
    def _gate_after_admins_hook(self, proposal: Any) -> Any:
        """An admin's own hook runs first; the catalog gate then runs all the same."""
        hook = proposal["value"]
        if hook == self.dcloud_apply_user_options or getattr(hook, "_dcloud_gated", False):
            return hook

        async def gated(spawner: Any, user_options: dict) -> None:
            try:
                if isinstance(hook, dict):
                    result = _apply_by_mapping(spawner, hook, user_options or {})
                else:
                    result = hook(spawner, user_options)
                if inspect.isawaitable(result):
                    await result
            except web.HTTPError:
                raise  # the admin's hook chose its answer
            except Exception as exc:
                self.log.exception("%s: the site's apply_user_options failed", self._log_name)
                self._keep_last_valid_options()
                self.refuse(refusals.options_not_applied(str(exc)), user_options)
            await self.dcloud_apply_user_options(spawner, user_options)

        gated._dcloud_gated = True  # type: ignore[attr-defined]
        gated._dcloud_fields = set(hook) if isinstance(hook, dict) else set()  # type: ignore[attr-defined]
        return gated

    @traitlets.observe("apply_user_options")
    def _no_hook_is_the_gate(self, change: Any) -> None:
        if change["new"] is None:
            self.apply_user_options = self.dcloud_apply_user_options

    def extra_fields(self) -> set[str]:
        """Fields the site's own hooks handle (declared, or the keys of a dict-form hook)."""
        hook = self._trait_values.get("apply_user_options")
        return set(self.extra_option_fields) | getattr(hook, "_dcloud_fields", set())

    # -- the site's configuration ----------------------------------------------------------

    def config_problems(self) -> list[str]:
        """Sentences for the admin about settings DCloud ignores or Kubernetes would refuse;
        backends add theirs. Fatal ones start with "Refused:"."""
        return []

    # -- inputs -----------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return hub_state().catalogs.get(self.catalog_path)

    @classmethod
    def hub_setting(cls, config: Any, name: str) -> Any:
        """The value of trait ``name`` as the hub's configuration sets it for this class (the
        sections KubeSpawner reads, the most specific winning), whatever a hook changed on one
        spawner: hub-wide parts are built from this, not from the first spawner's traits."""
        value = cls.class_traits()[name].default()
        for section in [k.__name__ for k in reversed(cls.mro())]:
            if section in config and name in config[section]:
                value = config[section][name]
        return value

    def user_groups(self) -> list[str]:
        """The JupyterHub groups of this spawner's user (filled by the authenticator)."""
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    def validate_options(self, options: Any) -> Plan:
        """The one gate: options -> Plan for this user, or RequestError."""
        extra = self.extra_fields()
        if extra and isinstance(options, dict):
            options = {k: v for k, v in options.items() if k not in extra}
        return validate(options, self.catalog, self.user_groups())

    def planned(self) -> Plan:
        """This start's plan. JupyterHub's path made it in apply_user_options; a direct call
        of ``start()`` validates here, and a refusal is the same sentence, never a 500."""
        if self.dcloud_plan is None:
            try:
                self.dcloud_plan = self.validate_options(self.user_options)
            except Refusal as exc:
                self.refuse(exc)
        return self.dcloud_plan

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

    async def fill_form_context(self, context: FormContext) -> None:
        """Add to ``context`` what must be asked for as the form renders (the Kubernetes backend:
        the home volume's size and use); backends override, bounded in time."""

    def check_capacity(self, plan: Plan) -> None:
        """Refuse (CapacityRefusal) a plan that cannot fit right now; backends override."""

    async def read_claim_facts(self, plan: Plan) -> Plan:
        """Read from the backend what the start needs before anything is held or made (the
        Kubernetes backend: that the claims' StorageClasses exist, and the home volumes that
        :meth:`claim_resources` counts); backends override, refusing with a Refusal. Returns the
        plan, as what was read completes it (a home size not asked: the volume's size now, where
        larger than the default). Awaited before the capacity check, so nothing is awaited
        between that check and the claim."""
        return plan

    # -- JupyterHub hooks ---------------------------------------------------------------

    async def dcloud_options_form(self, spawner: Any = None) -> str:
        catalog = self.catalog
        allowance = catalog.allowance(self.user_groups())
        await self.refresh_live_data()
        options = hub_state().attempts.take(self.user.name)
        if options is None:
            options = self.user_options or {}
            try:
                self.validate_options(options)
            except RequestError:
                options = {}  # stale or never valid: start from the defaults
        context = self.form_context()
        await self.fill_form_context(context)
        return render_form(catalog, allowance, options, context)

    def dcloud_options_from_form(self, formdata: dict[str, list[Any]]) -> dict[str, Any]:
        attempts = hub_state().attempts
        raw = request_from_form(formdata)
        attempts.remember(self.user.name, raw)
        try:
            uploaded = uploaded_options(formdata)
            if uploaded:  # a file replaces the form's fields entirely (the form says so)
                raw = uploaded
                attempts.remember(self.user.name, raw)
            plan = self.validate_options(raw)
        except RequestError as exc:
            # no spawn began: JupyterHub shows the form again with the sentence
            self.refuse(exc, raw, as_raised=True)
        attempts.forget(self.user.name)
        return plan.user_options()

    async def dcloud_apply_user_options(self, spawner: Any, user_options: dict) -> None:
        """Validate, check capacity, then claim the plan's resources against the quotas."""
        try:
            plan = self.validate_options(user_options)
            await self.refresh_live_data()
            plan = await self.read_claim_facts(plan)
            self.check_capacity(plan)
            self.claim_resources(plan)
        except Refusal as exc:
            self._keep_last_valid_options()
            self.refuse(exc, user_options)
        self.dcloud_plan = plan
        extra = self.extra_fields()
        kept = {k: v for k, v in (user_options or {}).items() if k in extra} if isinstance(user_options, dict) else {}
        self.user_options = {**plan.user_options(), **kept}
        self._dcloud_last_valid = copy.deepcopy(self.user_options)

    def _keep_last_valid_options(self) -> None:
        """JupyterHub stored a refused request's options before asking us; put back the last
        good ones, so a bad REST call cannot poison the next form or restart."""
        previous = copy.deepcopy(self._dcloud_last_valid or {})
        self.user_options = previous
        orm = getattr(self, "orm_spawner", None)
        if orm is not None:
            orm.user_options = previous

    # -- quotas -----------------------------------------------------------------------

    @property
    def claim_key(self) -> tuple[str, str]:
        return (self.user.name, getattr(self, "name", "") or "")

    def claim_resources(self, plan: Plan) -> None:
        """Hold ``plan``'s resources in the hub-wide ledger, or raise QuotaExceeded."""
        hub_state().ledger.claim(self.catalog, Claim.of(*self.claim_key, self.user_groups(), plan))

    def release_resources(self) -> None:
        hub_state().ledger.release(*self.claim_key)

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
        hub_state().ledger.adopt(Claim.of(*self.claim_key, self.user_groups(), plan))

    # -- audit and metrics ----------------------------------------------------------------

    def refuse(self, refusal: Refusal, options: Any = _THIS_START, *, as_raised: bool = False,
               **fields: Any) -> NoReturn:
        """The one way out of a refused start: count ``refusal`` by its reason, write its audit
        line (``options`` as asked, this start's by default; ``fields`` added), and raise it as
        :class:`SpawnRefused`. ``as_raised``: raise ``refusal`` itself (the form's own path,
        where JupyterHub shows the form again rather than failing a spawn)."""
        hub_state().metrics.refused(refusal.reason)
        self.audit("refused", self.user_options if options is _THIS_START else options,
                   reason=refusal.sentence, **fields)
        if as_raised:
            raise refusal
        raise SpawnRefused.of(refusal) from None

    def audit(self, event: str, options: Any, **fields: Any) -> None:
        """One JSON line per spawn, refusal and stop: who, what was asked, the outcome."""
        audit.record(event, getattr(self.user, "name", None), getattr(self, "name", ""),
                     self.user_groups(), options, **fields)
