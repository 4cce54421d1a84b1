"""The volume claims a start makes (the home volume, a scratch disk on a class): their
StorageClasses must exist, and a claim that stays Pending ends the start.

A class the catalog names that the cluster lacks is refused before anything is created (one
``get`` of the class). A claim whose class exists but provisions nothing (its provisioner is
down, or no volume matches) stays Pending: with ``Immediate`` binding the scheduler reports
the pod's "unbound immediate PersistentVolumeClaims", with ``WaitForFirstConsumer`` it waits
quietly for the volume. Once the pod has waited for a node a moment, its claims are read (at
most every ``READ_EVERY`` seconds, only until it is placed), and one still Pending after the
spawner's ``volume_pending_grace_seconds`` ends the start in one sentence naming the field; the
pod is deleted, a home volume's claim kept.

The grace time counts from when a provisioner was asked for the volume: at once for an
``Immediate`` claim, but for a ``WaitForFirstConsumer`` one only once the scheduler has chosen a
node (the claim's ``volume.kubernetes.io/selected-node``, or the PV controller's
``storage-provisioner`` annotation). Before that the claim waits for the pod's node like the pod
does (a cluster autoscaler adding a GPU node, Kueue admitting the pod), and the scheduler's own
verdict, under ``unschedulable_grace_seconds``, decides.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException, StorageV1Api

from ..core import refusals
from ..core.errors import Refusal, clip
from .failures import api_answer

SCRATCH_VOLUME = "dcloud-scratch"  # pod.py's; a generic ephemeral volume's claim is <pod>-<volume>
READ_EVERY = 2.0
FIRST_READ_AFTER = 1.0  # a pod the scheduler places at once costs no read
SELECTED_NODE = "volume.kubernetes.io/selected-node"  # the scheduler's node for a WaitForFirstConsumer claim
# the PV controller's word to the provisioner that it is asked (beta name: clusters before 1.23)
PROVISIONER = ("volume.kubernetes.io/storage-provisioner", "volume.beta.kubernetes.io/storage-provisioner")
WAIT_FOR_CONSUMER = "WaitForFirstConsumer"


async def require_class(spawner: Any, field: str, name: str | None) -> None:
    """Refuse (``field``: home or scratch) when the StorageClass ``name`` does not exist. Without
    the right to read classes nothing is known, and nothing refused."""
    if not name:
        return  # the cluster's default class: a missing one shows as a Pending claim
    try:
        await StorageV1Api(spawner.api.api_client).read_storage_class(
            name, _request_timeout=spawner.k8s_api_request_timeout)
    except ApiException as exc:
        if exc.status == 404:
            raise refusals.storage_class_missing(field, name) from None
        if exc.status != 403:
            raise refusals.volume_api_error(field, f"reading the storage class '{clip(name, 80)}'",
                                            api_answer(exc)) from None


def claims_of(spawner: Any, pod: dict) -> dict[str, tuple[str, str | None]]:
    """The pod's own claims: name -> (field, StorageClass)."""
    found: dict[str, tuple[str, str | None]] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if spawner.storage_pvc_ensure and claim and claim == spawner.pvc_name:
            found[claim] = ("home", spawner.storage_class or None)
        template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate")
        if volume.get("name") == SCRATCH_VOLUME and template:
            name = f"{(pod.get('metadata') or {}).get('name')}-{SCRATCH_VOLUME}"
            found[name] = ("scratch", (template.get("spec") or {}).get("storageClassName"))
    return found


def about_volumes(message: str) -> bool:
    """Whether the scheduler's FailedScheduling message is about volumes not bound yet."""
    lowered = message.lower()
    return "persistentvolumeclaim" in lowered or "persistent volumes" in lowered or "volumebinding" in lowered


def claim_not_made_yet(message: str) -> bool:
    """Whether the scheduler's FailedScheduling message says only that a generic ephemeral
    volume's claim (the scratch disk's) does not exist yet: normal right after the pod is made,
    until the ephemeral volume controller makes it. The scheduler tries again then, and its next
    words decide (or the claim's grace time, once provisioning); a controller that never makes
    it is bounded by the start's own timeout."""
    return "waiting for ephemeral volume controller to create the persistentvolumeclaim" in message


class PendingClaims:
    """One start's watch of its pod's claims while the pod waits for a node."""

    def __init__(self, spawner: Any, grace: float) -> None:
        self.spawner = spawner
        self.grace = grace
        self.waiting = False  # a claim is Pending on its provisioner: the grace time runs
        self._unplaced_since: float | None = None
        self._pending_since: float | None = None  # when a provisioner was first asked (see the module)
        self._read_at = 0.0
        self._modes: dict[str | None, str | None] = {}  # class -> volumeBindingMode (None: unknown), read once

    async def check(self, pod: dict | None) -> Refusal | None:
        """The refusal once one of the pod's claims has been Pending for the grace time."""
        now = time.monotonic()
        if pod is None or (pod.get("spec") or {}).get("nodeName"):
            self._unplaced_since = self._pending_since = None
            self.waiting = False
            return None
        self._unplaced_since = self._unplaced_since or now
        if now - self._unplaced_since < FIRST_READ_AFTER or now - self._read_at < READ_EVERY:
            return None
        self._read_at = now
        pending, asked = [], []
        for name, (field, cls) in claims_of(self.spawner, pod).items():
            state = await self._state(name)
            if state is not None:
                pending.append((field, cls))
                if state:
                    asked.append((field, cls))
        if not pending:
            self._pending_since = None
        elif asked:
            # kept while the claim stays Pending, even if the scheduler drops its node choice to
            # retry: a provisioner failing again and again must not restart the clock each time
            self._pending_since = self._pending_since or now
        self.waiting = self._pending_since is not None
        if self._pending_since is None or now - self._pending_since < self.grace:
            return None
        field, storage_class = (asked or pending)[0]
        return refusals.volume_pending(field, storage_class, self.grace)

    async def _state(self, name: str) -> bool | None:
        """None: the claim is not Pending (or nothing is known); True: Pending on its provisioner;
        False: Pending until the scheduler chooses the pod's node (or not made yet)."""
        spawner = self.spawner
        try:
            claim = await spawner.api.read_namespaced_persistent_volume_claim(
                name, spawner.namespace, _request_timeout=spawner.k8s_api_request_timeout
            )
        except ApiException as exc:
            # a scratch claim not made yet (the ephemeral volume controller makes it with the pod)
            # waits, but for no provisioner; other answers tell nothing
            return False if exc.status == 404 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None  # the API server's trouble is told by the start itself, not as a volume's
        if (claim.status.phase if claim.status else None) != "Pending":
            return None
        annotations = (claim.metadata.annotations if claim.metadata else None) or {}
        if SELECTED_NODE in annotations or any(key in annotations for key in PROVISIONER):
            return True
        mode = await self._binding_mode(claim.spec.storage_class_name if claim.spec else None)
        # unknown (the class cannot be read): the annotations above are the only word of a provisioner
        return mode is not None and mode != WAIT_FOR_CONSUMER

    async def _binding_mode(self, storage_class: str | None) -> str | None:
        """The class's volumeBindingMode; a claim of no class binds at once (Immediate)."""
        if not storage_class:
            return "Immediate"
        if storage_class not in self._modes:
            spawner = self.spawner
            try:
                found = await StorageV1Api(spawner.api.api_client).read_storage_class(
                    storage_class, _request_timeout=spawner.k8s_api_request_timeout)
                self._modes[storage_class] = found.volume_binding_mode or "Immediate"  # the API's default
            except (ApiException, aiohttp.ClientError, asyncio.TimeoutError):
                self._modes[storage_class] = None
        return self._modes[storage_class]
