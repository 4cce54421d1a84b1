"""``DCloudSpawner``: the Kubernetes backend, a thin adapter over KubeSpawner.

Contract, in JupyterHub's order of calls:

1. ``options_form`` / ``options_from_form`` (form) or REST ``user_options``;
2. ``apply_user_options``: validates them into ``self.dcloud_plan`` or answers 400;
3. ``start``: KubeSpawner's own start, whose ``load_user_options`` step sets the pod
   traits from the plan; meanwhile scheduler events are watched, and a pod the scheduler
   cannot place ends the spawn with the reason in the user's terms (``start`` is
   KubeSpawner's public entry; its private ``_start`` is left alone); so does a failed
   package init container, with the package named, and an API server that does not
   answer, in one sentence;
4. ``poll``: a notebook container the kernel killed for memory is remembered, and the
   next form says so;
5. ``stop``: KubeSpawner deletes the pod and what it owns.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
import types
from typing import Any, NamedTuple

import aiohttp
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Bool, Float, List, Unicode, default
from traitlets.log import get_logger

from ..core.catalog import duration_words
from ..core.errors import CapacityRefusal, Refusal
from ..core.plan import Plan
from ..core.quantity import format_memory
from ..core.queueing import ADMISSION_GATE, QUEUE_LABEL, Queue, ordinal, queue_for
from ..hub.form import FormContext
from ..hub.mixin import DCloudMixin, SpawnRefused
from ..hub.state import hub_state
from . import security
from .pod import PACKAGE_INSTALLER, PLANNED_TRAITS, apply_plan
from .queue import KueueView, hold_reason, position
from .watch import ClusterWatch


class DCloudSpawner(DCloudMixin, KubeSpawner):
    """Spawns the notebook pod a user chose in DCloud's form, as validated by the catalog."""

    image_path = Unicode(
        "/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        config=True,
        help="""PATH of the notebook images. When extra packages are installed, their
        scripts directory is put in front of it (Kubernetes cannot append to an image's PATH).
        The default is that of the Jupyter Docker Stacks images, plus the directory where
        the NVIDIA container toolkit puts nvidia-smi.""",
    )

    package_install_args = List(
        Unicode(),
        config=True,
        help="""Extra pip arguments for the package init container, set by the admin (e.g.
        ["--trusted-host", "pypi.internal"]). Users can never add pip options.""",
    )

    unschedulable_grace_seconds = Float(
        3.0,
        config=True,
        help="""How long the scheduler may keep reporting that the pod fits no node before
        the spawn is refused with the reason. Raise it where a cluster autoscaler adds GPU
        nodes on demand.""",
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

    # Whether a pod may exist for this server. Assumed of a spawner built from the database (the
    # hub restarted under a running server); not after JupyterHub's clear_state, which begins
    # every start and ends every stop, until start() asks for a pod. A start refused before
    # that (bad options) is then cleaned up without the API: its 400 stays a 400 while the
    # API server is unreachable.
    _dcloud_may_have_pod = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        mock = kwargs.get("_mock", False)
        super().__init__(*args, **kwargs)
        checked = hub_state().part("kube.config_checked", set) if not mock else {True}
        if not checked:  # once per hub, as its first spawner is made
            checked.add(True)
            for problem in self.config_problems():
                self.log.warning("DCloud: %s", problem)
        self._base_traits = {t: copy.deepcopy(getattr(self, t)) for t in PLANNED_TRAITS}
        self._dcloud_planned = False  # whether the traits hold a plan since they were restored
        self._base_start_timeout = self.start_timeout
        self._dcloud_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._dcloud_line: InLine | None = None  # this start's wait in Kueue's line, if queued
        self._dcloud_starting: Starting | None = None  # its GPUs, once past the capacity check

    def check_capacity(self, plan: Plan) -> None:
        queueing = self.catalog.queueing
        # The spawn's timeout covers the wait in line, per request (JupyterHub reads it after this).
        extra = (queueing.max_wait if plan.wait else queueing.refuse_after) if queueing.enabled else 0
        self.start_timeout = self._base_start_timeout + extra
        self._dcloud_starting = None
        live_data = self.live_data() if plan.gpu else None
        if live_data is not None and live_data.stale_since is not None:
            return  # numbers from before an outage must not refuse anyone; the scheduler decides
        live = live_data.availability(self.catalog) if live_data else None
        if not live or plan.gpu is None or plan.gpu.id not in live:
            return
        gpu = live[plan.gpu.id]
        if gpu.total < plan.gpu_count:  # even an idle cluster could not: "try again" would mislead
            raise CapacityRefusal.too_few_gpus(plan.gpu.display_name, plan.gpu_count, gpu.total, where="node")
        starting = self._starting_elsewhere(live_data, plan.gpu.id)
        if gpu.largest_free_block >= plan.gpu_count and gpu.free - starting >= plan.gpu_count:
            self._dcloud_starting = Starting(f"{self.namespace}/{self.pod_name}", plan.gpu.id, plan.gpu_count)
            return
        if not (queueing.enabled and plan.wait):
            detail = f"{gpu.free} of {gpu.total} free, at most {gpu.largest_free_block} on one node"
            if starting:
                detail = f"{gpu.free} of {gpu.total} free, {starting} of them going to servers starting now"
            raise CapacityRefusal.no_free_gpus(plan.gpu.display_name, plan.gpu_count, detail)
        waiting = [key for key in self.queued_servers() if key[0] == self.user.name and key != self.claim_key]
        if len(waiting) >= queueing.max_queued_per_user:
            limit = queueing.max_queued_per_user
            raise CapacityRefusal(
                f"You already have {len(waiting)} server{'s' if len(waiting) != 1 else ''} waiting in line, "
                f"and at most {limit} may wait at once; stop {'it' if len(waiting) == 1 else 'one'} or let "
                "it start before queueing another.", field="wait", reason="queue_limit")

    @staticmethod
    def starting_servers() -> dict[tuple[str, str], Starting]:
        """(user, server) -> the GPUs of each server let through the capacity check whose pod
        the hub's watch does not yet show on a node (so the free counts do not include it)."""
        return hub_state().part("kube.starting", dict)

    def _starting_elsewhere(self, live_data: ClusterWatch, gpu_id: str) -> int:
        """GPUs of ``gpu_id`` going to other servers starting now; forgets those the watch
        already counts (their pod is on a node), so none is counted twice."""
        starting = self.starting_servers()
        total = 0
        for key, entry in list(starting.items()):
            facts = live_data.live.pods.get(entry.pod)
            if facts is not None and facts[0]:
                del starting[key]
            elif entry.gpu == gpu_id and key != self.claim_key:
                total += entry.count
        return total

    def claim_resources(self, plan: Plan) -> None:
        super().claim_resources(plan)  # raises if a quota refuses: then nothing is starting
        if self._dcloud_starting is not None:
            self.starting_servers()[self.claim_key] = self._dcloud_starting

    def release_resources(self) -> None:
        super().release_resources()
        self.starting_servers().pop(self.claim_key, None)

    @staticmethod
    def queued_servers() -> dict[tuple[str, str], float]:
        """(user, server) -> when it began to wait, for every server of this hub waiting in line."""
        return hub_state().part("kube.queued", dict)

    def kueue_view(self) -> KueueView | None:
        if not self.catalog.queueing.enabled:
            return None
        state = hub_state()
        view = state.part("kube.queue", lambda: KueueView(self.queue_poll_seconds))
        view.ensure_started(self.namespace)
        state.queues = view
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
        sections = [k.__name__ for k in reversed(cls.mro()) if k.__name__ in config]
        traits = cls.class_traits()
        settings = {}
        for name in ("profile_list", "uid", "privileged", "container_security_context", "pod_security_context"):
            value = traits[name].default() if name not in ("container_security_context",
                                                           "pod_security_context") else None
            for section in sections:
                if name in config[section]:
                    value = config[section][name]
            settings[name] = value
        return _problems(types.SimpleNamespace(**settings))

    async def get_pod_manifest(self) -> Any:
        pod = await super().get_pod_manifest()
        problem = security.contradiction(pod)
        if problem is not None:  # refused before anything is created, not a pod that never starts
            refusal = Refusal(problem, reason="configuration")
            self.refused(refusal, self.user_options)
            raise SpawnRefused.of(refusal)
        return pod

    async def refresh_live_data(self) -> None:
        await super().refresh_live_data()
        self.kueue_view()  # the line lengths, read in the background from the first form or request on

    def live_data(self) -> ClusterWatch | None:
        if not self.show_availability:
            return None
        # the hub's config, so an admin's c.ClusterPodReflector / c.NodeReflector settings apply
        return hub_state().part("kube.watch", lambda: ClusterWatch(config=self.config))

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

    async def start(self) -> str:  # type: ignore[override]
        plan = self.dcloud_plan
        self.dcloud_last_stop = None
        self._dcloud_may_have_pod = True
        self._dcloud_messages = asyncio.Queue()  # nothing said during an earlier start
        self._dcloud_line = None
        start = super().start()  # KubeSpawner keeps this future to end progress() with it
        watch = asyncio.ensure_future(self._doomed())
        try:
            done, _ = await asyncio.wait([start, watch], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            start.cancel()
            watch.cancel()
            raise
        if start in done:
            line = self._dcloud_line
            if line is not None and not start.cancelled() and start.exception() is None:
                line.started()  # Running before the watch's next look: still tell how long it waited
            watch.cancel()
            try:
                url = start.result()  # raises if the start failed
            except ApiException as exc:
                self.release_resources()
                reason = explain_api_refusal(exc)
                if reason is None and self.dcloud_queue(plan) is not None and webhook_failed(exc):
                    refusal = Refusal(QUEUE_DOWN, reason="queue_unavailable")
                    self.refused(refusal, self.user_options)
                    raise SpawnRefused.of(refusal) from None
                if reason is None:
                    raise
                refusal = CapacityRefusal(reason, reason="resourcequota")
                self.refused(refusal, self.user_options, pod=self.pod_name)
                raise SpawnRefused.of(refusal) from None
            except Exception as exc:
                self.release_resources()
                if not self._cluster_unreachable(exc):
                    raise
                refusal = Refusal(UNREACHABLE, reason="cluster_unreachable")
                self.refused(refusal, self.user_options)
                raise SpawnRefused.of(refusal) from None
            except BaseException:
                self.release_resources()
                raise
            self.audit("spawned", self.user_options, granted=plan.summary() if plan else None,
                       pod=self.pod_name)
            return url
        start.cancel()
        refusal = watch.result()
        self.refused(refusal, self.user_options, pod=self.pod_name)
        await self.stop(now=True)  # releases the claim too
        raise SpawnRefused.of(refusal)

    async def _start_reflector(self, kind: str, reflector_class: Any, replace: bool = False, **kwargs: Any) -> Any:
        """KubeSpawner's, but a reflector whose first list did not finish is not kept.

        KubeSpawner registers a reflector before its first list, and every later start and stop
        waits for that list. When the events reflector fails first (API server down), KubeSpawner
        cancels the pods reflector's start mid-list: kept, it would leave every later start and
        stop of this namespace waiting forever. Dropped, the next call lists afresh.
        """
        key = self._get_reflector_key(kind)
        before = self.__class__.reflectors.get(key)
        try:
            return await super()._start_reflector(kind, reflector_class, replace=replace, **kwargs)
        except BaseException:
            mine = self.__class__.reflectors.get(key)
            if mine is not None and mine is not before:  # this call made it, and its start ended here
                del self.__class__.reflectors[key]
                loaded = mine.first_load_future
                if not loaded.done():  # wake whoever waits for it: they fail as this start did
                    loaded.set_exception(RuntimeError(f"the {kind} reflector did not finish its first list"))
                    loaded.exception()  # retrieved: not logged as never retrieved
            raise

    def _cluster_unreachable(self, exc: BaseException) -> bool:
        """Whether a failed start is the API server not answering (not a fault of the request)."""
        chain: list[BaseException] = []
        while exc is not None and len(chain) < 10:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        if any(isinstance(e, aiohttp.ClientConnectionError) for e in chain):
            return True
        live = self.live_data()
        return isinstance(chain[0], TimeoutError) and live is not None and live.stale_since is not None

    async def _doomed(self) -> Refusal:
        """Wait until the pod cannot start: the scheduler has reported it unplaceable for the
        grace time, the package init container failed, or it waited in Kueue's line too long."""
        first_seen: float | None = None
        line = InLine(self, self.dcloud_plan) if self.dcloud_plan and self.dcloud_queue(self.dcloud_plan) else None
        self._dcloud_line = line
        try:
            while True:
                await asyncio.sleep(0.25)
                pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") if self.pod_reflector else None
                failure = package_failure(pod, self.dcloud_plan)
                if failure is not None:
                    return Refusal(failure, field="packages", reason="packages")
                if line is not None:
                    refusal = await line.check(pod)
                    if refusal is not None:
                        return refusal
                    if line.gated:
                        continue
                first_seen = self._unschedulable(pod, first_seen)
                if isinstance(first_seen, Refusal):
                    return first_seen
        finally:
            if line is not None:
                line.leave()

    def _unschedulable(self, pod: dict | None, first_seen: float | None) -> float | Refusal | None:
        """The scheduler's verdict: when it first said the pod fits nowhere, or the refusal once
        it has said so for the grace time."""
        if not self.events_enabled or self.event_reflector is None:
            return first_seen
        if pod and (pod.get("spec") or {}).get("nodeName"):
            return None  # placed after all
        failed = [e for e in self.events if e.get("reason") == "FailedScheduling"]
        if not failed:
            return first_seen
        first_seen = first_seen or time.monotonic()
        if time.monotonic() - first_seen >= self.unschedulable_grace_seconds:
            sentence = explain_unschedulable(failed[-1].get("message") or "", self.dcloud_plan)
            return CapacityRefusal(sentence, reason="unschedulable")
        return first_seen

    def say(self, message: str, progress: int = 5) -> None:
        """A line for the progress page, besides KubeSpawner's events (e.g. the place in line)."""
        self._dcloud_messages.put_nowait({"progress": progress, "message": message})

    async def progress(self):  # type: ignore[override]
        """KubeSpawner's events, plus DCloud's words for what the pod is doing and where it is
        in line."""
        plan = self.dcloud_plan
        if plan is not None:
            yield {"progress": 1, "message": f"Requested {plan.summary()}"}
        upstream = super().progress().__aiter__()
        next_event = asyncio.ensure_future(upstream.__anext__())
        next_message = asyncio.ensure_future(self._dcloud_messages.get())
        try:
            while True:
                done, _ = await asyncio.wait({next_event, next_message}, return_when=asyncio.FIRST_COMPLETED)
                if next_message in done:
                    yield next_message.result()
                    next_message = asyncio.ensure_future(self._dcloud_messages.get())
                if next_event not in done:
                    continue
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    break
                next_event = asyncio.ensure_future(upstream.__anext__())
                yield event
                raw = event.get("raw_event") or {}
                about = (raw.get("involvedObject") or raw.get("involved_object") or {}).get("fieldPath") or ""
                if plan is not None and plan.packages and raw.get("reason") == "Started" \
                        and about == f"spec.initContainers{{{PACKAGE_INSTALLER}}}":
                    yield {"progress": event.get("progress", 50),
                           "message": f"Installing extra packages: {', '.join(plan.packages)}"}
        finally:
            next_message.cancel()
            next_event.cancel()

    async def poll(self) -> int | None:
        if not self._dcloud_may_have_pod:
            self.release_resources()  # claimed by apply_user_options, then the start failed early
            return 0
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") if self.pod_reflector else None
        ended = out_of_memory(pod, self.dcloud_plan)
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
        await super().stop(now=now)
        self.release_resources()
        extra = {"reason": self.dcloud_last_stop} if self.dcloud_last_stop else {}
        self.audit("stopped", self.user_options, pod=self.pod_name, **extra)

    def get_state(self) -> dict:
        state = super().get_state()
        if getattr(self, "pod_id", None):  # running: keep what it holds across hub restarts
            state.update(self.dcloud_state())
        if self.dcloud_last_stop:
            state["dcloud_last_stop"] = self.dcloud_last_stop
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
        self.load_dcloud_state(state)
        self.dcloud_last_stop = state.get("dcloud_last_stop") or self.dcloud_last_stop


def _problems(settings: Any) -> list[str]:
    """What DCloud says of a site's KubeSpawner settings (a spawner, or the config's values)."""
    problems = []
    profiles = settings.profile_list
    if callable(profiles) or profiles:
        problems.append("KubeSpawner.profile_list is set, but DCloud's catalog replaces profiles, so it is "
                        "ignored: describe the environments, GPU classes and resources in the catalog instead.")
    problem = security.static_contradiction(settings)
    if problem:
        problems.append(f"Refused: {problem}")
    return problems


def _container(pod: dict | None, name: str, kind: str = "containerStatuses") -> dict:
    for status in ((pod or {}).get("status") or {}).get(kind) or []:
        if status.get("name") == name:
            return status
    return {}


def package_failure(pod: dict | None, plan: Plan | None) -> str | None:
    """Why the package init container failed, in words; None while it has not failed."""
    if plan is None or not plan.packages:
        return None
    status = _container(pod, PACKAGE_INSTALLER, "initContainerStatuses")
    ended = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    if not ended or ended.get("exitCode") == 0:
        return None
    return plan.install_failure(ended.get("message") or "")


def out_of_memory(pod: dict | None, plan: Plan | None) -> str | None:
    """The sentence for a notebook container killed for using more memory than its limit."""
    ended = (_container(pod, "notebook").get("state") or {}).get("terminated") or {}
    if ended.get("reason") != "OOMKilled":
        return None
    limit = f" of {format_memory(plan.memory_limit)}" if plan else ""
    return (f"Your last server was stopped because it ran out of memory: it used more than its "
            f"limit{limit}, so the kernel killed it. Choose more memory below, or use less.")


QUEUE_DOWN = ("The queue for GPUs (Kueue) is unavailable right now, so nothing was started; try again in a "
              "few minutes, and tell the administrators if it lasts.")


def webhook_failed(exc: ApiException) -> bool:
    """Whether the API server refused the pod because an admission webhook did not answer."""
    return exc.status is not None and exc.status >= 500 and "failed calling webhook" in str(exc.body or "")


def waiting_for(plan: Plan) -> str:
    if plan.gpu is None:
        return f"{plan.cpu_limit:g} CPU and {format_memory(plan.memory_limit)}"
    return f"{plan.gpu_count} × {plan.gpu.display_name}"


class Starting(NamedTuple):
    """A server's GPUs between the capacity check and its pod's appearance on a node."""

    pod: str  # namespace/name, as the hub's pod watch keys it
    gpu: str  # the GPU class id
    count: int


class InLine:
    """One spawn's wait in Kueue's line: its place, told on the progress page as it moves;
    the refusal when the catalog's ``max_wait`` passes (or, without 'wait', ``refuse_after``)."""

    def __init__(self, spawner: DCloudSpawner, plan: Plan) -> None:
        self.spawner = spawner
        self.plan = plan
        self.queue = spawner.dcloud_queue(plan)
        self.queueing = spawner.catalog.queueing
        self.since: float | None = None  # monotonic time the pod began to wait
        self.gated = False
        self.place: tuple[int, int] | None = None
        self.said: str | None = None
        self.next_ask = 0.0
        self.admitted = False

    async def check(self, pod: dict | None) -> Refusal | None:
        gates = [g.get("name") for g in ((pod or {}).get("spec") or {}).get("schedulingGates") or []]
        self.gated = pod is not None and ADMISSION_GATE in gates
        now = time.monotonic()
        if not self.gated:
            if pod is not None:
                self.started()
            return None
        if self.since is None:
            self.since = now
            waiting = [k for k in self.spawner.queued_servers() if k[0] == self.spawner.user.name]
            if self.plan.wait and len(waiting) >= self.queueing.max_queued_per_user:
                return CapacityRefusal(
                    f"You already have {len(waiting)} server{'s' if len(waiting) != 1 else ''} waiting in line, "
                    f"and at most {self.queueing.max_queued_per_user} may wait at once; stop one or let it "
                    "start before queueing another.", field="wait", reason="queue_limit")
            self.spawner.queued_servers()[self.spawner.claim_key] = time.time()
            self.spawner.say(f"Joined the line of {self.queue.who} for {waiting_for(self.plan)}")
        if now >= self.next_ask:
            self.next_ask = now + self.spawner.queue_poll_seconds
            found = await position(self.spawner.api.api_client, self.spawner.namespace, self.queue.name,
                                   self.spawner.pod_name)
            if found is not None:
                self.place = found
                sentence = self.sentence()
                if sentence != self.said:
                    self.said = sentence
                    self.spawner.say(sentence)
        limit = self.queueing.max_wait if self.plan.wait else self.queueing.refuse_after
        if now - self.since < limit:
            return None
        self.leave("expired" if self.plan.wait else "refused")
        return self.refusal()

    def started(self) -> None:
        """Say once that the queue let the pod through: at once, or after how long it waited."""
        if self.admitted:
            return
        self.admitted = True
        if self.since is None:
            self.spawner.say(f"Admitted at once by the queue of {self.queue.who}", 10)
            return
        waited = time.monotonic() - self.since
        self.leave("admitted")
        self.spawner.say(f"Admitted by the queue after {duration_words(max(1, waited))}; starting", 10)

    def sentence(self) -> str:
        place = f"{ordinal(self.place[0])} in line" if self.place else "in line"
        use = ""
        live = self.spawner.live_data()
        numbers = live.availability(self.spawner.catalog) if live and self.plan.gpu else None
        if numbers and self.plan.gpu and self.plan.gpu.id in numbers:
            gpu = numbers[self.plan.gpu.id]
            use = f" ({gpu.total - gpu.free} of {gpu.total} in use)"
        return f"Waiting for {waiting_for(self.plan)}: {place} for {self.queue.who}{use}"

    def refusal(self) -> Refusal:
        what = self.plan.gpu.display_name if self.plan.gpu else f"{self.plan.cpu_limit:g} CPU"
        count = self.plan.gpu_count if self.plan.gpu else 1
        place = f"; you were {ordinal(self.place[0])} in line" if self.place else ""
        if self.plan.wait:
            within = duration_words(self.queueing.max_wait)
            sentence = (f"No {what} became free within {within}{place}." if count == 1 else
                        f"{count} × {what} did not become free within {within}{place}.")
            return CapacityRefusal(sentence, field="wait", reason="queue_timeout")
        view = self.spawner.kueue_view()
        why = hold_reason(view.workload_of(self.spawner.pod_name)) if view else ""
        why = f" (the queue says: {why})" if why else ""
        return CapacityRefusal(
            f"{count} × {what} cannot start for {self.queue.who} right now{why}; tick 'Wait in line' to wait up "
            f"to {duration_words(self.queueing.max_wait)} for {'it' if count == 1 else 'them'}.",
            field="wait", reason="queue_full")

    def leave(self, outcome: str = "left") -> None:
        """Out of the line (admitted, refused, or the user stopped): forget it, time the wait."""
        began = self.spawner.queued_servers().pop(self.spawner.claim_key, None)
        if began is not None and self.since is not None:
            hub_state().metrics.queue_waited(outcome, time.monotonic() - self.since)


UNREACHABLE = ("The cluster's API server does not answer right now, so nothing was started; "
               "try again in a minute.")
_INSUFFICIENT = re.compile(r"Insufficient ([\w./-]+)")
_QUOTA = re.compile(r"exceeded quota: ([\w.-]+), requested: (\S+), used: (\S+), limited: (\S+)")


def explain_api_refusal(exc: ApiException) -> str | None:
    """A namespace ResourceQuota's refusal of the pod, in words; None for other errors."""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    match = _QUOTA.search(message)
    if exc.status != 403 or not match:
        return None
    name, requested, used, limited = match.groups()

    def amounts(text: str) -> dict[str, str]:
        return dict(part.split("=", 1) for part in text.split(",") if "=" in part)

    asked, held, cap = amounts(requested), amounts(used), amounts(limited)
    parts = [f"{key.removeprefix('requests.').removeprefix('limits.')}: this server asks for {value}, "
             f"{held.get(key, '0')} already in use, limit {cap.get(key, '?')}" for key, value in asked.items()]
    return f"The namespace quota '{name}' does not allow this server ({'; '.join(parts)})."


def explain_unschedulable(message: str, plan: Plan | None) -> str:
    """The scheduler's FailedScheduling message, said in terms of the user's choice."""
    missing = set(_INSUFFICIENT.findall(message))
    if plan and plan.gpu and plan.gpu.resource in missing:
        return CapacityRefusal.no_free_gpus(plan.gpu.display_name, plan.gpu_count).sentence
    if plan and ("cpu" in missing or "memory" in missing):
        what = " and ".join(
            part for part, key in (
                (f"{plan.cpu_request:g} CPU cores", "cpu"),
                (f"{format_memory(plan.memory_request)} of memory", "memory"),
            ) if key in missing
        )
        return f"No node has {what} free right now; ask for less, or try again later."
    if "didn't match Pod's node affinity/selector" in message or "untolerated taint" in message:
        return "No node of the chosen kind exists or accepts this server right now."
    return f"The cluster cannot place this server: {message.split('. preemption:')[0]}."
