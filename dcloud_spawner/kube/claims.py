"""The volume claims a start makes (the home volume, a scratch disk on a class): their
StorageClasses must exist, and a claim that stays Pending ends the start.

A class the catalog names that the cluster lacks is refused before anything is created (one
``get`` of the class). A claim whose class exists but provisions nothing (its provisioner is
down, or no volume matches) stays Pending: with ``Immediate`` binding the scheduler reports
the pod's "unbound immediate PersistentVolumeClaims", with ``WaitForFirstConsumer`` it waits
quietly for the volume. Either way, once the pod has waited for a node a moment, its claims
are read (at most every ``READ_EVERY`` seconds, only until it is placed) and one still Pending
after the spawner's ``volume_pending_grace_seconds`` ends the start in one sentence naming the
field; the pod is deleted, a home volume's claim kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException, StorageV1Api

from ..core import refusals
from ..core.errors import Refusal

SCRATCH_VOLUME = "dcloud-scratch"  # pod.py's; a generic ephemeral volume's claim is <pod>-<volume>
READ_EVERY = 2.0
FIRST_READ_AFTER = 1.0  # a pod the scheduler places at once costs no read


async def require_class(spawner: Any, field: str, name: str | None) -> None:
    """Refuse (``field``: home or scratch) when the StorageClass ``name`` does not exist. Without
    the right to read classes nothing is known, and nothing refused."""
    if not name:
        return  # the cluster's default class: a missing one shows as a Pending claim
    try:
        await StorageV1Api(spawner.api.api_client).read_storage_class(name)
    except ApiException as exc:
        if exc.status == 404:
            raise refusals.storage_class_missing(field, name) from None
        if exc.status != 403:
            raise


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


class PendingClaims:
    """One start's watch of its pod's claims while the pod waits for a node."""

    def __init__(self, spawner: Any, grace: float) -> None:
        self.spawner = spawner
        self.grace = grace
        self.waiting = False  # a claim was Pending at the last read
        self._unplaced_since: float | None = None
        self._pending_since: float | None = None
        self._read_at = 0.0

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
        pending = [
            (field, cls) for name, (field, cls) in claims_of(self.spawner, pod).items() if await self._pending(name)
        ]
        self.waiting = bool(pending)
        if not pending:
            self._pending_since = None
            return None
        self._pending_since = self._pending_since or now
        if now - self._pending_since < self.grace:
            return None
        field, storage_class = pending[0]
        return refusals.volume_pending(field, storage_class, self.grace)

    async def _pending(self, name: str) -> bool:
        spawner = self.spawner
        try:
            claim = await spawner.api.read_namespaced_persistent_volume_claim(
                name, spawner.namespace, _request_timeout=spawner.k8s_api_request_timeout
            )
        except ApiException as exc:
            return exc.status == 404  # a scratch claim not made yet is waiting too; other answers tell nothing
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False  # the API server's trouble is told by the start itself, not as a volume's
        return (claim.status.phase if claim.status else None) == "Pending"
