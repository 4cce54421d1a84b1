"""``DCloudSpawner``: the Kubernetes backend, a thin adapter over KubeSpawner.

Contract, in JupyterHub's order of calls:

1. ``options_form`` / ``options_from_form`` (form) or REST ``user_options``;
2. ``apply_user_options``: validates them into ``self.dcloud_plan`` or answers 400;
3. ``start``: KubeSpawner's own start, whose ``load_user_options`` step sets the pod
   traits from the plan; meanwhile scheduler events are watched, and a pod the scheduler
   cannot place ends the spawn with the reason in the user's terms (``start`` is
   KubeSpawner's public entry; its private ``_start`` is left alone); so does a failed
   package init container, with the package named, and an API server that does not
   answer, in one sentence; it returns as soon as the pod watch shows the pod running, not at
   KubeSpawner's next look (``pod_wait.py``);
4. ``poll``: a notebook container the kernel killed for memory is remembered, and the
   next form says so;
5. ``stop``: KubeSpawner deletes the pod and what it owns.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import time
import types
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException
from kubespawner import KubeSpawner
from traitlets import Bool, Float, Unicode, default
from traitlets.log import get_logger

from ..core import refusals
from ..core.errors import Refusal
from ..core.plan import Plan
from ..core.queueing import QUEUE_LABEL, Queue, queue_for
from ..core.quotas import HomeVolume, HomeVolumes
from ..hub.form import FormContext
from ..hub.mixin import DCloudMixin
from ..hub.package_marks import PackageEnvHolder
from ..hub.state import hub_state
from . import admission, claims, failures, home_volume, security, volume_stats
from .attempt import StartAttempt, merged_progress
from .pod import PLANNED_TRAITS, apply_plan, literal
from .pod_wait import WakesOnThePodWatch
from .queue import KueueView
from .reflector_compat import DropsHalfStartedReflectors
from .watch import ClusterWatch

FORM_READ_SECONDS = 2.0  # the longest the form waits for each of its readings of the cluster


def home_volumes() -> HomeVolumes:
    """The hub's record of its users' home volumes, for group quotas."""
    return hub_state().part(HomeVolumes, HomeVolumes)


class ConfigChecked:
    """Whether this hub has said what it thinks of the site's KubeSpawner settings."""

    done = False


class DCloudSpawner(DCloudMixin, PackageEnvHolder, WakesOnThePodWatch, DropsHalfStartedReflectors, KubeSpawner):
    """Spawns the notebook pod a user chose in DCloud's form, as validated by the catalog."""

    image_path = Unicode(
        "/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        config=True,
        help="""PATH of the notebook images. When extra packages are installed, their
        scripts directory is put in front of it (Kubernetes cannot append to an image's PATH).
        The default is that of the Jupyter Docker Stacks images, plus the directory where
        the NVIDIA container toolkit puts nvidia-smi.""",
    )

    unschedulable_grace_seconds = Float(
        3.0,
        config=True,
        help="""How long the scheduler may keep reporting that the pod fits no node before
        the spawn is refused with the reason. Raise it where a cluster autoscaler adds GPU
        nodes on demand.""",
    )

    home_resize_wait_seconds = Float(
        60.0,
        config=True,
        help="""How long a start that grows the user's home volume waits for the storage driver
        to grow it (the claim's capacity reaching the new size, or only the node's file-system
        step left) before it creates the pod. Past it the start goes on with the volume as it
        is, and the progress page says the new size shows once the driver has finished.""",
    )
    volume_pending_grace_seconds = Float(
        120.0,
        config=True,
        help="""How long the claim of a home volume or of a scratch disk may stay Pending (no
        volume provisioned for it) while the pod waits for a node, before the spawn is refused
        with the field named: the pod is deleted, a home volume's claim kept. With a
        WaitForFirstConsumer class it counts from when the scheduler has chosen a node; until
        then unschedulable_grace_seconds applies. Raise it where provisioning a volume takes longer.""",
    )

    show_home_usage = Bool(
        True,
        config=True,
        help="""Show in the form how much of the home volume is used, where a running server of
        the user mounts it, else as read when the server last stopped (with the time): read from
        that node's kubelet (its /stats/summary), with the hub's credentials and the cluster's CA,
        which needs `get` on `nodes/stats` (helm-values/rbac.yaml). Where the kubelet cannot be
        reached or its certificate is not from the cluster's CA, the form shows the size alone.""",
    )

    show_availability = Bool(
        True,
        config=True,
        help="""Watch Nodes and Pods cluster-wide to show free GPUs per class in the form and to
        refuse, before any pod is created, a request that fits no node right now. Needs the
        ClusterRole in helm-values/rbac.yaml; without it the form works and shows no numbers.""",
    )

    queue_poll_seconds = Float(
        2.0,
        config=True,
        help="""With queueing on (the catalog's `queueing.enabled`), how often a waiting spawn asks
        Kueue's visibility API for its place in line, and how often the hub reads the
        queues for the form, the admin page and the metrics.""",
    )

    @default("uid")
    def _uid_default(self) -> int:
        return 1000

    @default("fs_gid")
    def _fs_gid_default(self) -> int:
        return 100

    @default("container_security_context")
    def _csc_default(self) -> Any:
        # evaluated as the pod is built, so uid, privileged and allow_privilege_escalation
        # (from the config or this start's hooks) take effect; see security.py
        return security.container_context

    @default("pod_security_context")
    def _psc_default(self) -> Any:
        return security.pod_context

    @default("automount_service_account_token")
    def _no_token(self) -> bool:
        return False

    @default("extra_pod_config")
    def _never_restart(self) -> dict:
        # A notebook container that dies (killed for memory, crashed) ends the server, so the
        # hub sees it and says why; KubeSpawner's OnFailure would restart it in place, silently,
        # and retry a failing package install in a crash loop until the start timeout.
        return {"restartPolicy": "Never"}

    dcloud_last_stop: str | None = None  # why the last server ended unasked, for the next form
    # [bytes, unix time]: the home volume's use as its kubelet reported it at the last stop, for
    # the next form (the form of a stopped server has no running pod to read it from)
    dcloud_home_used: list[float] | None = None

    # Whether a pod may exist for this server. Assumed of a spawner built from the database (the
    # hub restarted under a running server); not after JupyterHub's clear_state, which begins
    # every start and ends every stop, until start() asks for a pod. A start refused before
    # that (bad options) is then cleaned up without the API: its 400 stays a 400 while the
    # API server is unreachable.
    _dcloud_may_have_pod = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        mock = kwargs.get("_mock", False)
        super().__init__(*args, **kwargs)
        checked = hub_state().part(ConfigChecked, ConfigChecked) if not mock else None
        if checked is not None and not checked.done:  # once per hub, as its first spawner is made
            checked.done = True
            for problem in self.config_problems():
                self.log.warning("DCloud: %s", problem)
        self._base_traits = {t: copy.deepcopy(getattr(self, t)) for t in PLANNED_TRAITS}
        self._dcloud_planned = False  # whether the traits hold a plan since they were restored
        self._base_start_timeout = self.start_timeout
        self.start_attempt = StartAttempt()  # this start's: its GPUs, progress lines, wait in line

    def check_capacity(self, plan: Plan) -> None:
        """Begin this start's attempt: its timeout, and its GPUs if they fit (see admission.py)."""
        # The spawn's timeout covers the wait in line, per request (JupyterHub reads it after this).
        self.start_timeout = admission.start_timeout(self._base_start_timeout, plan, self.catalog.queueing)
        self.start_attempt = StartAttempt()  # a refusal below leaves nothing admitted
        live_data = self.live_data() if plan.gpu else None
        self.start_attempt = StartAttempt(admission.admit(plan, self.catalog, live_data, self.claim_key,
                                                    f"{self.namespace}/{self.pod_name}"))

    starting_servers = staticmethod(admission.starting_servers)
    queued_servers = staticmethod(admission.queued_servers)

    _dcloud_home_claim: HomeVolume | None = None  # this start's home volume, for group quotas
    _dcloud_home_now: int | None = None  # its size as this start read it (None: not made yet)

    async def read_claim_facts(self, plan: Plan) -> Plan:
        """Before anything is held or made: the StorageClasses of the claims this start would make
        exist (a missing one is refused), the home volume's size now (one read), and the home
        volumes that exist, where a group quota of the user's sums them (see home_volume.listed)."""
        self._dcloud_home_claim = None
        self._dcloud_home_now = None
        try:
            await self._read_claim_facts(plan)
        except ApiException as exc:  # a raw one would be JupyterHub's 500 (a class's own are told by require_class)
            raise refusals.volume_api_error("home", "reading the home volumes", failures.api_answer(exc)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raise refusals.cluster_unreachable() from None
        now = self._dcloud_home_now
        if plan.home_defaulted and plan.home_bytes is not None and now is not None and now > plan.home_bytes:
            # no size asked: the volume as it is, not the catalog's default (refused as a shrink)
            plan = dataclasses.replace(plan, home_bytes=now)
        return plan

    async def _read_claim_facts(self, plan: Plan) -> None:
        storage = plan.storage
        if storage is not None and storage.scratch is not None and plan.scratch_bytes is not None:
            await claims.require_class(self, "scratch", storage.scratch.storage_class)
        if plan.home_bytes is None or not self.storage_pvc_ensure:
            return
        groups = home_volume.quota_groups(self.catalog, self.user_groups())
        # with user namespaces each claim is in its owner's namespace and the hub may list one:
        # max_home is not enforced there (said by _problems), rather than counted from a part
        counted = bool(groups) and not self.enable_user_namespaces
        # the claim itself, whatever labels it has (one made before an upgrade has none of
        # DCloud's): what it may grow from, and whether KubeSpawner makes a new one
        reading = home_volume.size_now(self, self.k8s_api_request_timeout)
        if counted:
            volumes = home_volumes()
            since = volumes.now()
            current, found = await asyncio.gather(reading, home_volume.listed(self, self._quota_groups_of))
            mine = HomeVolume(self.namespace, self.pvc_name, tuple(groups), current or 0)
            volumes.seen(self.namespace, [v for v in found if v.key != mine.key] + ([mine] if current else []), since)
            self._dcloud_home_claim = HomeVolume(self.namespace, self.pvc_name, tuple(groups),
                                                 max(plan.home_bytes, current or 0))
        else:
            current = await reading
        self._dcloud_home_now = current
        if current is None:  # KubeSpawner will make the claim: on the catalog's class, else the site's
            home_class = (storage.home.storage_class if storage is not None and storage.home is not None else None)
            await claims.require_class(self, "home", home_class or self.storage_class or None)

    def claim_resources(self, plan: Plan) -> None:
        home = self._dcloud_home_claim
        if home is not None:  # before anything is held
            home_volumes().check(self.catalog, home, self.catalog.allowance(self.user_groups()).max_home)
        super().claim_resources(plan)  # raises if a quota refuses: then nothing is starting
        if home is not None:  # in the same step as the check: no other claim comes between
            home_volumes().record(home, self.claim_key)
        if self.start_attempt.gpus is not None:
            admission.starting_servers()[self.claim_key] = self.start_attempt.gpus

    def release_resources(self) -> None:
        super().release_resources()
        admission.starting_servers().pop(self.claim_key, None)
        home_volumes().release(self.claim_key)  # the next listing says what the start left

    def _quota_groups_of(self, names: set[str]) -> dict[str, list[str]]:
        """The groups with a ``max_home`` of the users ``names``, as the hub knows them now (its
        database, one query): for claims no start of DCloud's has marked yet."""
        found = {self.user.name: self.user_groups()} if self.user.name in names else {}
        db = getattr(self.user, "db", None)  # JupyterHub's User has it; a stand-in may not
        if db is not None and names - found.keys():
            from jupyterhub import orm
            from sqlalchemy.orm import selectinload

            users = db.query(orm.User).filter(orm.User.name.in_(names - found.keys()))
            for user in users.options(selectinload(orm.User.groups)):
                found[user.name] = [g.name for g in user.groups]
        return {name: home_volume.quota_groups(self.catalog, groups) for name, groups in found.items()}

    def kueue_view(self) -> KueueView | None:
        if not self.catalog.queueing.enabled:
            return None
        state = hub_state()

        def made() -> KueueView:
            made_view = KueueView(self.hub_setting(self.config, "queue_poll_seconds"))
            state.queues = made_view  # the admin page and metrics read the lines from it
            return made_view

        view = state.part(KueueView, made)
        view.ensure_started(self.namespace)
        return view

    def dcloud_queue(self, plan: Plan) -> Queue | None:
        """The Kueue queue this server joins; None with queueing off."""
        if not self.catalog.queueing.enabled:
            return None
        return queue_for(self.catalog, self.user_groups(), plan.gpu)

    async def load_user_options(self) -> None:
        """Set the pod traits from the validated plan (called by KubeSpawner's start)."""
        plan = self.planned()
        if self._dcloud_planned:  # a second start() without JupyterHub's clear_state between
            self._restore_configured_traits()
        gpu_resources = {gpu.resource for gpu in self.catalog.gpu_classes}
        apply_plan(self, plan, self.image_path, list(self.package_install_args), gpu_resources)
        self._dcloud_planned = True
        groups = self.user_groups()
        marked = home_volume.quota_groups(self.catalog, groups)  # only those the claim counts for
        if plan.home_bytes is not None and self.storage_pvc_ensure:  # a new claim is made with them
            marks = home_volume.metadata(marked)
            self.storage_extra_labels = {**self.storage_extra_labels, **marks["labels"]}
            self.storage_extra_annotations = {**self.storage_extra_annotations, **literal(marks["annotations"])}
        try:
            grown = await home_volume.grow(self, plan, self.catalog.allowance(groups).max_home, marked)
        except Refusal as refusal:
            self.refuse(refusal)
        if grown:
            self.say(grown)
        queue = self.dcloud_queue(plan)
        if queue is not None:
            self.extra_labels = {**self.extra_labels, QUEUE_LABEL: queue.name}

    def config_problems(self) -> list[str]:
        return super().config_problems() + _problems(self)

    @classmethod
    def check_hub_config(cls, config: Any, log: Any = None) -> None:
        """Called from jupyterhub_config.py at hub start: warn about each setting DCloud
        ignores, and stop the hub with the sentence when a setting could never run."""
        log = log or get_logger()
        problems = cls.config_problems_of(config)
        for problem in problems:
            log.warning("DCloud: %s", problem)
        fatal = [p for p in problems if p.startswith("Refused:")]
        if fatal:
            raise SystemExit(fatal[0])

    @classmethod
    def config_problems_of(cls, config: Any) -> list[str]:
        """:meth:`config_problems` of the settings in ``config`` alone: no spawner is made
        (that needs a user and a cluster's credentials), each setting is read from the
        sections KubeSpawner reads it from, the most specific winning."""
        settings = {name: cls.hub_setting(config, name)
                    for name in ("profile_list", "uid", "privileged", "enable_user_namespaces")}
        for name in ("container_security_context", "pod_security_context"):  # DCloud's defaults are callables
            settings[name] = cls.hub_setting(config, name) if any(
                name in config[k.__name__] for k in cls.mro() if k.__name__ in config) else None
        return _problems(types.SimpleNamespace(**settings))

    async def get_pod_manifest(self) -> Any:
        pod = await super().get_pod_manifest()
        problem = security.contradiction(pod)
        if problem is not None:  # refused before anything is created, not a pod that never starts
            self.refuse(refusals.configuration(problem))
        return pod

    async def refresh_live_data(self) -> None:
        await super().refresh_live_data()
        self.kueue_view()  # the line lengths, read in the background from the first form or request on

    def live_data(self) -> ClusterWatch | None:
        if not self.show_availability:
            return None
        # the hub's config, so an admin's c.ClusterPodReflector / c.NodeReflector settings apply
        state = hub_state()

        def made() -> ClusterWatch:
            watch = ClusterWatch(config=self.config)
            state.serve(self.catalog_path, watch)  # the admin page and metrics read its numbers
            return watch

        return state.part(ClusterWatch, made)

    def form_context(self) -> FormContext:
        context = super().form_context()
        view = self.kueue_view()
        context.can_queue = view is not None
        if view is not None and view.read_at is not None:
            context.waiting = view.waiting(self.catalog)
        live = self.live_data()
        if live is not None and live.stale_since is not None:
            context.stale_since = live.stale_since
            when = time.strftime("%H:%M:%S UTC", time.gmtime(live.stale_since))
            context.notices.append(f"The cluster has not answered since {when}, so the free GPUs shown are "
                                   "as of then and may be out of date; starting a server may fail until it does.")
        if self.dcloud_last_stop:
            context.notices.insert(0, self.dcloud_last_stop)
        return context

    async def fill_form_context(self, context: FormContext) -> None:
        """The home volume's size now (one read of its claim) and, where a running server mounts
        it, its use (see volume_stats.py); each bounded by FORM_READ_SECONDS, else left out."""
        if self.catalog.storage.home is None or not self.storage_pvc_ensure:
            return
        try:
            context.home_size = await asyncio.wait_for(home_volume.size_now(self, FORM_READ_SECONDS),
                                                       FORM_READ_SECONDS)
        except Exception as exc:  # the form renders whatever the API server answers, without the size
            self.log.debug("DCloud: the size of %s is not known: %s", self.pvc_name, exc)
            return
        reflector = self.pod_reflector if self.show_home_usage and context.home_size is not None else None
        node = volume_stats.node_mounting(reflector.pods.values(), self.namespace, self.pvc_name) if reflector else None
        if node is None:
            if self.show_home_usage and context.home_size is not None and self.dcloud_home_used:
                context.home_used, context.home_used_at = int(self.dcloud_home_used[0]), self.dcloud_home_used[1]
            return
        stats = hub_state().part(volume_stats.KubeletStats, volume_stats.KubeletStats)
        try:
            context.home_used = await asyncio.wait_for(
                stats.used(self.api, node, self.namespace, self.pvc_name, FORM_READ_SECONDS), FORM_READ_SECONDS)
        except Exception as exc:  # the form renders whatever the kubelet does, without the use
            self.log.debug("DCloud: the use of %s on node %s is not known: %s", self.pvc_name, node, exc)

    def start(self) -> asyncio.Future[str]:  # type: ignore[override]
        """As KubeSpawner's: the spawn begins when start() is called, and its future is returned. A
        coroutine would do nothing until awaited, so a caller that reads progress() first (as
        KubeSpawner's own test_spawn_progress does) would wait on a spawn that never began."""
        return asyncio.ensure_future(self._dcloud_start())

    async def _dcloud_start(self) -> str:
        plan = self.dcloud_plan
        self.dcloud_last_stop = None
        self._dcloud_may_have_pod = True
        attempt = self.start_attempt = StartAttempt(self.start_attempt.gpus)  # nothing said during an earlier start
        start = super().start()  # KubeSpawner's, woken by the pod watch (pod_wait.py)
        watch = asyncio.ensure_future(attempt.doomed(self, plan))
        try:
            done, _ = await asyncio.wait([start, watch], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            start.cancel()
            watch.cancel()
            raise
        if start not in done:
            start.cancel()
            try:
                self.refuse(watch.result(), pod=self.pod_name)
            finally:
                await self.stop(now=True)  # after the refusal's audit line; releases the claim too
        if not start.cancelled() and start.exception() is None:
            attempt.started()
        watch.cancel()
        try:
            url = start.result()  # raises if the start failed
        except Exception as exc:
            self.release_resources()
            live = self.live_data()
            refusal = failures.start_refusal(exc, queued=plan is not None and self.dcloud_queue(plan) is not None,
                                             watch_stale=live is not None and live.stale_since is not None)
            if refusal is None:
                raise
            # the API server saw the pod only when its quota refused it
            self.refuse(refusal, **({"pod": self.pod_name} if refusal.reason == "resourcequota" else {}))
        except BaseException:
            self.release_resources()
            raise
        self.audit("spawned", self.user_options, granted=plan.summary() if plan else None, pod=self.pod_name)
        return url

    def say(self, message: str, progress: int = 5) -> None:
        """A line for this start's progress page, besides KubeSpawner's events."""
        self.start_attempt.say(message, progress)

    async def progress(self):  # type: ignore[override]
        """KubeSpawner's events, plus DCloud's words for what the pod is doing and where it is
        in line."""
        async for event in merged_progress(super().progress(), lambda: self.start_attempt.messages, self.dcloud_plan):
            yield event

    async def poll(self) -> int | None:
        if not self._dcloud_may_have_pod:
            self.release_resources()  # claimed by apply_user_options, then the start failed early
            return 0
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") if self.pod_reflector else None
        ended = failures.out_of_memory(pod, self.dcloud_plan) or failures.evicted(pod, self.dcloud_plan, self.events)
        if ended is not None:  # before KubeSpawner's poll, which stops (and audits) the server
            self.dcloud_last_stop = ended
        status = await super().poll()
        if status is not None:
            self.release_resources()
        return status

    async def stop(self, now: bool = False) -> None:
        if not self._dcloud_may_have_pod:  # no pod asked for: nothing to delete, nothing to audit
            self.release_resources()
            return
        await self._note_home_use()
        await super().stop(now=now)
        self.release_resources()
        extra = {"reason": self.dcloud_last_stop} if self.dcloud_last_stop else {}
        self.audit("stopped", self.user_options, pod=self.pod_name, **extra)

    async def _note_home_use(self) -> None:
        """The home volume's use, read from its kubelet before the pod goes, for the next form:
        one read, bounded by FORM_READ_SECONDS; a stop never waits longer or fails for it."""
        reflector = self.pod_reflector
        if not (self.show_home_usage and self.catalog.storage.home is not None and self.storage_pvc_ensure
                and reflector is not None):
            return
        node = volume_stats.node_mounting(reflector.pods.values(), self.namespace, self.pvc_name)
        if node is None:
            return
        stats = hub_state().part(volume_stats.KubeletStats, volume_stats.KubeletStats)
        try:
            used = await asyncio.wait_for(
                stats.used(self.api, node, self.namespace, self.pvc_name, FORM_READ_SECONDS, max_age=0),
                FORM_READ_SECONDS)
        except Exception as exc:  # the stop goes on whatever the kubelet does
            self.log.debug("DCloud: the use of %s was not read at stop: %s", self.pvc_name, exc)
            return
        if used is not None:
            self.dcloud_home_used = [used, time.time()]

    def get_state(self) -> dict:
        state = super().get_state()
        if getattr(self, "pod_id", None):  # running: keep what it holds across hub restarts
            state.update(self.dcloud_state())
        if self.dcloud_last_stop:
            state["dcloud_last_stop"] = self.dcloud_last_stop
        if self.dcloud_home_used:
            state["dcloud_home_used"] = self.dcloud_home_used
        state.update(self.package_env_state())  # also once stopped: the user's other starts read it
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self._dcloud_may_have_pod = False
        # JupyterHub clears the state before each start's hooks (auth_state_hook, group
        # overrides, apply_user_options, pre_spawn_hook): they, then the plan, begin from the
        # configured values, not from what the last start's plan left
        self._restore_configured_traits()

    def _restore_configured_traits(self) -> None:
        for trait, value in getattr(self, "_base_traits", {}).items():  # none yet inside __init__
            setattr(self, trait, copy.deepcopy(value))
        self._dcloud_planned = False

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.load_package_env_state(state)
        self.load_dcloud_state(state)
        self.dcloud_last_stop = state.get("dcloud_last_stop") or self.dcloud_last_stop
        used = state.get("dcloud_home_used")
        if isinstance(used, list) and len(used) == 2 and all(_amount(v) for v in used):
            self.dcloud_home_used = [float(v) for v in used]


def _amount(value: Any) -> bool:
    """A finite non-negative number (bytes, a time) read from stored state; not a bool, which
    Python counts as an int, nor NaN, infinity or an int past a float, which would render as garbage."""
    try:
        return type(value) in (int, float) and math.isfinite(value) and value >= 0
    except OverflowError:
        return False


def _problems(settings: Any) -> list[str]:
    """What DCloud says of a site's KubeSpawner settings (a spawner, or the config's values)."""
    problems = []
    profiles = settings.profile_list
    if callable(profiles) or profiles:
        problems.append("KubeSpawner.profile_list is set, but DCloud's catalog replaces profiles, so it is "
                        "ignored: describe the environments, GPU classes and resources in the catalog instead.")
    if settings.enable_user_namespaces:
        # listing claims in every user's namespace would need a cluster-wide right to list
        # claims, more than rbac.yaml grants; counting only the namespaces seen would be wrong
        problems.append("KubeSpawner.enable_user_namespaces is set, so each user's home volume is in their own "
                        "namespace, where the hub does not list claims: the catalog's quotas.groups.<g>.max_home "
                        "is not enforced (each user's own max_home still is).")
    problem = security.static_contradiction(settings)
    if problem:
        problems.append(f"Refused: {problem}")
    return problems
