"""A user's home volume (KubeSpawner's claim): grown to the size they chose before the pod,
counted in its groups' ``max_home``, and its size now for the form.

A home volume only grows: asking for less than it has is refused in one sentence, and so is
asking for more where its StorageClass does not allow expansion (nothing is changed then).
Otherwise the claim's requested size is patched and the storage driver expands the volume;
the start waits (up to ``home_resize_wait_seconds``) for the driver's side of it, so that the
pod does not mount the volume mid-resize: a driver that grows offline cannot finish while a
pod holds the volume. The claim's ``status.capacity`` reaching the size, or its
``FileSystemResizePending`` condition (the node finishes when it mounts the volume), ends the
wait; past the bound the start goes on and says the new size shows once the driver is done.
A claim that does not exist yet is KubeSpawner's to create, at the chosen size. Needs
`get`/`patch` on persistentvolumeclaims and `get` on storageclasses (helm-values/rbac.yaml), and `list` on
persistentvolumeclaims (the chart's own hub Role) for group quotas.

Every claim DCloud sizes carries the label ``dcloud.io/volume=home`` and, in the annotation
``dcloud.io/groups``, those of its owner's groups at their last start that have a ``max_home``
(only those: the claim does not publish the rest of their membership): the hub's group quotas
read them (state that outlives the hub lives on the claim). They are written when KubeSpawner
creates the claim, and patched onto an existing one at a start where they differ. A claim made
before DCloud marked claims (KubeSpawner's label ``component=singleuser-storage`` alone) counts
for its owner's groups as the hub knows them now (see :func:`listed`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes_asyncio.client import ApiException, StorageV1Api

from ..core import refusals
from ..core.catalog import Catalog
from ..core.plan import Plan
from ..core.quantity import format_memory, memory_bytes
from ..core.quotas import HomeVolume
from .pod import LABEL_PREFIX

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
VOLUME_LABEL = f"{LABEL_PREFIX}/volume"
GROUPS_ANNOTATION = f"{LABEL_PREFIX}/groups"
MAX_GROUPS = 100  # read of an annotation: more is not a list DCloud wrote
# on every claim KubeSpawner makes (its get_pvc_manifest sets it after the site's extra labels)
STORAGE_LABEL = "component=singleuser-storage"
USERNAME_ANNOTATION = "hub.jupyter.org/username"  # KubeSpawner's, the name unescaped


def metadata(groups: list[str]) -> dict[str, dict[str, str]]:
    """The label and annotation DCloud keeps on a home volume's claim; ``groups``: those of the
    owner's with a ``max_home`` (:func:`quota_groups`)."""
    return {"labels": {VOLUME_LABEL: "home"}, "annotations": {GROUPS_ANNOTATION: json.dumps(sorted(groups))}}


async def grow(spawner: Any, plan: Plan, most: int | None, groups: list[str]) -> str | None:
    """Make the claim at least ``plan.home_bytes`` and mark it with ``groups``; return what was
    done for the progress page.

    Raises a :class:`~..core.errors.Refusal` (shrinking, or a class that cannot expand)."""
    if plan.home_bytes is None or not spawner.storage_pvc_ensure:
        return None
    try:
        claim = await spawner.api.read_namespaced_persistent_volume_claim(spawner.pvc_name, spawner.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None  # KubeSpawner creates it at the chosen size (its class was checked before)
        raise
    requested = (claim.spec.resources.requests or {}).get("storage")
    current = memory_bytes(requested) if requested else 0
    if plan.home_bytes < current:
        raise refusals.home_only_grows(plan.home_bytes, current, most)
    patch: dict[str, Any] = {}
    wanted = metadata(groups)
    if any(
        (getattr(claim.metadata, kind) or {}).get(key) != value
        for kind, pairs in wanted.items()
        for key, value in pairs.items()
    ):
        patch["metadata"] = wanted
    said = None
    if plan.home_bytes > current:
        storage_class = claim.spec.storage_class_name
        if not await _expandable(spawner, storage_class):
            raise refusals.home_cannot_grow(current, storage_class)
        size = format_memory(plan.home_bytes)
        patch["spec"] = {"resources": {"requests": {"storage": size}}}
        said = f"Growing your home volume from {format_memory(current)} to {size}"
    if patch:
        await spawner.api.patch_namespaced_persistent_volume_claim(spawner.pvc_name, spawner.namespace, patch)
    if "spec" in patch and not await _resized(spawner, plan.home_bytes, spawner.home_resize_wait_seconds):
        said = (f"{said}; the storage driver has not finished yet, so your home shows its new size "
                "once it has (a volume that grows offline: after your next start)")
    return said


RESIZE_POLL = 0.5  # seconds between reads of the claim while it grows


async def _resized(spawner: Any, size: int, bound: float) -> bool:
    """Whether the driver grew the claim to ``size`` (or left only the node's part) within ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        claim = await spawner.api.read_namespaced_persistent_volume_claim(spawner.pvc_name, spawner.namespace)
        status = claim.status
        capacity = ((status.capacity if status else None) or {}).get("storage")
        if capacity and memory_bytes(capacity) >= size:
            return True
        if any(c.type == "FileSystemResizePending" for c in ((status.conditions if status else None) or [])):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(RESIZE_POLL)


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


def quota_groups(catalog: Catalog, groups: Iterable[str]) -> list[str]:
    """Those of ``groups`` whose quota sums home volumes: all a claim needs to say."""
    return sorted(g for g in groups if (q := catalog.quotas.groups.get(g)) is not None and q.max_home is not None)


def has_quota(catalog: Catalog, groups: list[str]) -> bool:
    """Whether a group quota sums home volumes for any of ``groups``."""
    return bool(quota_groups(catalog, groups))


async def listed(spawner: Any, groups_of: Callable[[set[str]], dict[str, list[str]]]) -> list[HomeVolume]:
    """The home volumes that exist in the spawner's namespace: the claims KubeSpawner made and
    those DCloud marked (two list requests at once; a label selector cannot say "or").

    A claim whose groups DCloud did not write, or wrote unreadably, counts for the groups that
    ``groups_of`` gives its owner (named by KubeSpawner's annotation on it; those with a
    ``max_home``), so claims made before an upgrade count too."""
    answers = await asyncio.gather(*(
        spawner.api.list_namespaced_persistent_volume_claim(
            spawner.namespace, label_selector=selector, _request_timeout=spawner.k8s_api_request_timeout)
        for selector in (f"{VOLUME_LABEL}=home", STORAGE_LABEL)
    ))
    found = {c.metadata.name: c for answer in answers for c in answer.items}
    volumes: list[HomeVolume] = []
    unknown: dict[str, list[HomeVolume]] = {}  # owner -> their claims without groups
    for claim in found.values():
        volume = volume_of(claim.metadata, claim.spec, spawner.namespace)
        if volume is None:
            continue
        owner = (claim.metadata.annotations or {}).get(USERNAME_ANNOTATION)
        if groups_on(claim.metadata) is None and isinstance(owner, str):
            unknown.setdefault(owner, []).append(volume)
        else:
            volumes.append(volume)
    known = groups_of(set(unknown)) if unknown else {}
    for owner, theirs in unknown.items():
        groups = tuple(sorted(known.get(owner, [])))
        volumes += [HomeVolume(v.namespace, v.name, groups, v.size) for v in theirs]
    return volumes


def groups_on(meta: Any) -> tuple[str, ...] | None:
    """The groups DCloud wrote on a claim, read as untrusted; None where there are none to read."""
    text = (meta.annotations or {}).get(GROUPS_ANNOTATION)
    if not isinstance(text, str):
        return None
    try:
        groups = json.loads(text)
    except ValueError:
        return None
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS or not all(isinstance(g, str) for g in groups):
        return None
    return tuple(sorted(groups))


def volume_of(meta: Any, spec: Any, namespace: str) -> HomeVolume | None:
    """A claim as the quota counts it, with the groups written on it (none where unreadable)."""
    try:
        size = memory_bytes((spec.resources.requests or {}).get("storage") or 0)
    except (AttributeError, ValueError):
        return None
    return HomeVolume(namespace, meta.name, groups_on(meta) or (), size)


async def size_now(spawner: Any, timeout: float) -> int | None:
    """The claim's requested size now (what it may grow from); None when it does not exist yet."""
    try:
        claim = await spawner.api.read_namespaced_persistent_volume_claim(
            spawner.pvc_name, spawner.namespace, _request_timeout=timeout
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    volume = volume_of(claim.metadata, claim.spec, spawner.namespace)
    return volume.size if volume is not None and volume.size else None
