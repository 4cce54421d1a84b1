"""What went wrong with a pod or the API, in the user's terms.

Pure readings of Kubernetes' answers (a pod's statuses, the scheduler's FailedScheduling
message, an API error), and :func:`volume_call`, which turns the API's errors on the volumes'
calls into refusals; the sentences themselves live in ``core/refusals.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from ..core import package_envs, refusals
from ..core.errors import Refusal, clip
from ..core.plan import Plan
from ..core.quantity import format_memory
from .pod import PACKAGE_INSTALLER

_INSUFFICIENT = re.compile(r"Insufficient ([\w./-]+)")
_QUOTA = re.compile(r"exceeded quota: ([\w.-]+), requested: (\S+), used: (\S+), limited: (\S+)")


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


def packages_outcome(pod: dict | None, plan: Plan | None) -> str | None:
    """What the package installer did, once it has ended well: a set of packages reused from
    the home volume (no pip ran) or built there for the next starts; None otherwise."""
    if plan is None or not plan.packages:
        return None
    status = _container(pod, PACKAGE_INSTALLER, "initContainerStatuses")
    ended = (status.get("state") or {}).get("terminated") or {}
    if ended.get("exitCode") != 0:
        return None
    how = str(ended.get("message") or "").split(" ", 1)[0]
    return package_envs.outcome(how == "reused", plan.packages) if how in ("reused", "built") else None


def out_of_memory(pod: dict | None, plan: Plan | None) -> str | None:
    """The sentence for a notebook container killed for using more memory than its limit."""
    ended = (_container(pod, "notebook").get("state") or {}).get("terminated") or {}
    if ended.get("reason") != "OOMKilled":
        return None
    limit = f" of {format_memory(plan.memory_limit)}" if plan else ""
    return (f"Your last server was stopped because it ran out of memory: it used more than its "
            f"limit{limit}, so the kernel killed it. Choose more memory below, or use less.")


def evicted(pod: dict | None, plan: Plan | None, events: Sequence[dict] = ()) -> str | None:
    """The sentence for a server the kubelet evicted, above all for writing more than its
    scratch disk or its own disk allowance (ephemeral-storage) may hold.

    The pod's status says so (phase Failed, reason Evicted) only where its container died of
    the kill. A notebook server ends cleanly on SIGTERM (exit 0), and since Kubernetes 1.27 its
    pod then ends Succeeded with no reason at all (kubernetes/kubernetes#120182); what remains
    is the kubelet's Warning event ``Evicted`` on the pod, read from ``events`` (this pod's
    only: matched by its uid), once the pod or its notebook container has ended."""
    status = (pod or {}).get("status") or {}
    if status.get("reason") == "Evicted":
        message = str(status.get("message") or "")
    elif _ended(pod) and (said := _evicted_event(pod, events)) is not None:
        message = said
    else:
        return None
    scratch = format_memory(plan.scratch_bytes) if plan is not None and plan.scratch_bytes else None
    if "EmptyDir volume" in message and "dcloud-scratch" in message:
        size = f"{scratch} " if scratch else ""
        return (f"Your last server was stopped because it wrote more than its {size}scratch disk (/scratch) holds, "
                "so Kubernetes evicted it. Choose a larger scratch size below, or write less there.")
    if "ephemeral local storage" in message or "local ephemeral storage" in message:
        ephemeral = plan.storage.ephemeral if plan is not None and plan.storage is not None else None
        limit = f" {format_memory(ephemeral.limit)}" if ephemeral is not None else ""
        return (f"Your last server was stopped because it wrote more than the{limit} it may write outside your "
                "home and /scratch (its own disk, /tmp and logs), so Kubernetes evicted it. Keep large files in "
                "your home or /scratch.")
    if "low on resource" in message:
        return ("Your last server was stopped because its node ran short of "
                f"{'disk' if 'ephemeral-storage' in message or 'nodefs' in message else 'resources'}, so Kubernetes "
                "evicted it; start it again.")
    return f"Your last server was evicted by Kubernetes: {clip(message, 200) or 'no reason given'}."


def _ended(pod: dict | None) -> bool:
    status = (pod or {}).get("status") or {}
    notebook = (_container(pod, "notebook").get("state") or {}).get("terminated")
    return status.get("phase") in ("Succeeded", "Failed") or bool(notebook)


def _evicted_event(pod: dict | None, events: Sequence[dict]) -> str | None:
    uid = ((pod or {}).get("metadata") or {}).get("uid")
    said = [e for e in events if isinstance(e, dict) and e.get("reason") == "Evicted"
            and uid and (e.get("involvedObject") or {}).get("uid") == uid]
    return str(said[-1].get("message") or "") if said else None


def webhook_failed(exc: ApiException) -> bool:
    """Whether the API server refused the pod because an admission webhook did not answer."""
    return exc.status is not None and exc.status >= 500 and "failed calling webhook" in str(exc.body or "")


def explain_api_refusal(exc: ApiException) -> Refusal | None:
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
    return refusals.namespace_quota(name, [
        (key.removeprefix("requests.").removeprefix("limits."), value, held.get(key, "0"), cap.get(key, "?"))
        for key, value in asked.items()])


def explain_unschedulable(message: str, plan: Plan | None) -> Refusal:
    """The scheduler's FailedScheduling message, said in terms of the user's choice."""
    wrong_node = "didn't match Pod's node affinity/selector" in message or "untolerated taint" in message
    return refusals.unschedulable(plan, set(_INSUFFICIENT.findall(message)), wrong_node,
                                  message.split(". preemption:")[0])


def cluster_unreachable(exc: BaseException, watch_stale: bool) -> bool:
    """Whether a failed start is the API server not answering (not a fault of the request):
    a connection error anywhere in the chain, or a timeout while the hub's watch is stale."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if any(isinstance(e, aiohttp.ClientConnectionError) for e in chain):
        return True
    return isinstance(chain[0], TimeoutError) and watch_stale


def start_refusal(exc: BaseException, queued: bool, watch_stale: bool) -> Refusal | None:
    """KubeSpawner's start failed with ``exc``: the refusal to tell, or None for a fault of
    DCloud's or the cluster's own (raised as it is). ``queued``: the pod was to join Kueue's line."""
    if isinstance(exc, ApiException):
        refusal = explain_api_refusal(exc)
        if refusal is None and queued and webhook_failed(exc):
            return refusals.queue_unavailable()
        return refusal
    if cluster_unreachable(exc, watch_stale):
        return refusals.cluster_unreachable()
    return None


def api_answer(exc: ApiException) -> str:
    """An API error as a sentence quotes it: its status and reason."""
    return f"HTTP {exc.status} ({exc.reason})" if exc.reason else f"HTTP {exc.status}"


@contextmanager
def volume_call(field: str, doing: str) -> Iterator[None]:
    """Calls of the API for the home volume or scratch disk (``field``) while DCloud is ``doing``
    something ("reading your home volume"): an error answer becomes the refusal that says so, an
    API server that does not answer :func:`~..core.refusals.cluster_unreachable`; a raw error would
    reach the user as JupyterHub's 500. A Refusal raised inside passes as it is."""
    try:
        yield
    except ApiException as exc:
        raise refusals.volume_api_error(field, doing, api_answer(exc)) from None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raise refusals.cluster_unreachable() from None
