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
from typing import Any

import aiohttp
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Bool, Float, List, Unicode, default

from ..core.errors import CapacityRefusal, Refusal
from ..core.plan import Plan
from ..core.quantity import format_memory
from ..hub.form import FormContext
from ..hub.mixin import DCloudMixin, SpawnRefused
from ..hub.state import hub_state
from .pod import PACKAGE_INSTALLER, PLANNED_TRAITS, RESTRICTED_CONTAINER, apply_plan
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

    @default("uid")
    def _uid_default(self) -> int:
        return 1000

    @default("fs_gid")
    def _fs_gid_default(self) -> int:
        return 100

    @default("container_security_context")
    def _csc_default(self) -> dict:
        return copy.deepcopy(RESTRICTED_CONTAINER)

    @default("pod_security_context")
    def _psc_default(self) -> dict:
        return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}

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
        super().__init__(*args, **kwargs)
        self._base_traits = {t: copy.deepcopy(getattr(self, t)) for t in PLANNED_TRAITS}

    def check_capacity(self, plan: Plan) -> None:
        live_data = self.live_data() if plan.gpu else None
        if live_data is not None and live_data.stale_since is not None:
            return  # numbers from before an outage must not refuse anyone; the scheduler decides
        live = live_data.availability(self.catalog) if live_data else None
        if not live or plan.gpu is None or plan.gpu.id not in live:
            return
        gpu = live[plan.gpu.id]
        if gpu.total < plan.gpu_count:  # even an idle cluster could not: "try again" would mislead
            raise CapacityRefusal.too_few_gpus(plan.gpu.display_name, plan.gpu_count, gpu.total, where="node")
        if gpu.largest_free_block < plan.gpu_count:
            raise CapacityRefusal.no_free_gpus(
                plan.gpu.display_name, plan.gpu_count,
                f"{gpu.free} of {gpu.total} free, at most {gpu.largest_free_block} on one node",
            )

    async def load_user_options(self) -> None:
        """Set the pod traits from the validated plan (called by KubeSpawner's start)."""
        plan = self.dcloud_plan or self.validate_options(self.user_options)
        self.dcloud_plan = plan
        apply_plan(self, plan, self._base_traits, self.image_path, list(self.package_install_args))

    def live_data(self) -> ClusterWatch | None:
        return hub_state().part("kube.watch", ClusterWatch) if self.show_availability else None

    def form_context(self) -> FormContext:
        context = super().form_context()
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
        start = super().start()  # KubeSpawner keeps this future to end progress() with it
        watch = asyncio.ensure_future(self._doomed())
        try:
            done, _ = await asyncio.wait([start, watch], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            start.cancel()
            watch.cancel()
            raise
        if start in done:
            watch.cancel()
            try:
                url = start.result()  # raises if the start failed
            except ApiException as exc:
                self.release_resources()
                reason = explain_api_refusal(exc)
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
        grace time, or the package init container failed."""
        first_seen: float | None = None
        while True:
            await asyncio.sleep(0.25)
            pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") if self.pod_reflector else None
            failure = package_failure(pod, self.dcloud_plan)
            if failure is not None:
                return Refusal(failure, field="packages", reason="packages")
            if not self.events_enabled or self.event_reflector is None:
                continue
            if pod and (pod.get("spec") or {}).get("nodeName"):
                first_seen = None
                continue  # placed after all
            failed = [e for e in self.events if e.get("reason") == "FailedScheduling"]
            if not failed:
                continue
            first_seen = first_seen or time.monotonic()
            if time.monotonic() - first_seen >= self.unschedulable_grace_seconds:
                sentence = explain_unschedulable(failed[-1].get("message") or "", self.dcloud_plan)
                return CapacityRefusal(sentence, reason="unschedulable")

    async def progress(self):  # type: ignore[override]
        """KubeSpawner's events, plus DCloud's words for what the pod is doing."""
        plan = self.dcloud_plan
        if plan is not None:
            yield {"progress": 1, "message": f"Requested {plan.summary()}"}
        async for event in super().progress():
            yield event
            raw = event.get("raw_event") or {}
            about = (raw.get("involvedObject") or raw.get("involved_object") or {}).get("fieldPath") or ""
            if plan is not None and plan.packages and raw.get("reason") == "Started" \
                    and about == f"spec.initContainers{{{PACKAGE_INSTALLER}}}":
                yield {"progress": event.get("progress", 50),
                       "message": f"Installing extra packages: {', '.join(plan.packages)}"}

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

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.load_dcloud_state(state)
        self.dcloud_last_stop = state.get("dcloud_last_stop") or self.dcloud_last_stop


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
