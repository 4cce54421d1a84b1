"""Growing a user's home volume (KubeSpawner's claim) to the size they chose, before the pod.

A home volume only grows: asking for less than it has is refused in one sentence, and so is
asking for more where its StorageClass does not allow expansion (nothing is changed then).
Otherwise the claim's requested size is patched and the storage driver expands the volume
(file systems grow online or when the pod mounts it). A claim that does not exist yet is
KubeSpawner's to create, at the chosen size. Needs `get`/`patch` on persistentvolumeclaims and
`get` on storageclasses (helm-values/rbac.yaml).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client import ApiException, StorageV1Api

from ..core import refusals
from ..core.plan import Plan
from ..core.quantity import format_memory, memory_bytes

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


async def grow(spawner: Any, plan: Plan, most: int | None) -> str | None:
    """Make the claim at least ``plan.home_bytes``; return what was done for the progress page.

    Raises a :class:`~..core.errors.Refusal` (shrinking, or a class that cannot expand)."""
    if plan.home_bytes is None or not spawner.storage_pvc_ensure:
        return None
    try:
        claim = await spawner.api.read_namespaced_persistent_volume_claim(spawner.pvc_name, spawner.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None  # KubeSpawner creates it at the chosen size
        raise
    requested = (claim.spec.resources.requests or {}).get("storage")
    current = memory_bytes(requested) if requested else 0
    if plan.home_bytes < current:
        raise refusals.home_only_grows(plan.home_bytes, current, most)
    if plan.home_bytes == current:
        return None
    storage_class = claim.spec.storage_class_name
    if not await _expandable(spawner, storage_class):
        raise refusals.home_cannot_grow(current, storage_class)
    size = format_memory(plan.home_bytes)
    await spawner.api.patch_namespaced_persistent_volume_claim(
        spawner.pvc_name, spawner.namespace, {"spec": {"resources": {"requests": {"storage": size}}}})
    return f"Growing your home volume from {format_memory(current)} to {size}"


async def _expandable(spawner: Any, name: str | None) -> bool:
    storage = StorageV1Api(spawner.api.api_client)
    try:
        if name:
            found = await storage.read_storage_class(name)
        else:
            classes = (await storage.list_storage_class()).items
            found = next((c for c in classes if (c.metadata.annotations or {}).get(DEFAULT_CLASS) == "true"), None)
    except ApiException as exc:
        if exc.status in (403, 404):
            return False
        raise
    return bool(found is not None and found.allow_volume_expansion)

