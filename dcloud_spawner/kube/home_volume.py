"""A user's home volume (KubeSpawner's claim): grown to the size they chose before the pod,
counted in its groups' ``max_home``, and its size now for the form.

A home volume only grows: asking for less than it has is refused in one sentence, and so is
asking for more where its StorageClass does not allow expansion, or where no volume is bound to
the claim yet (the API server resizes bound claims only); nothing is changed then. A start that
names no size takes the volume as it is where it is larger than the catalog's default.
Otherwise the claim's requested size is patched, naming the resourceVersion it was read at (two
starts growing a shared claim at once: the later reads it again and decides again), and the
storage driver expands the volume;
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
creates the claim, and patched onto an existing one at a start where they differ; a patch of
the marks alone that fails (a hub without `patch` on claims) is logged and never ends a start.
The API server's error answers end a start in one sentence (``failures.volume_call``). A claim made
before DCloud marked claims (KubeSpawner's label ``component=singleuser-storage`` alone) counts
for its owner's groups as the hub knows them now (see :func:`listed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException, StorageV1Api

from ..core import refusals
from ..core.catalog import Catalog
from ..core.plan import Plan
from ..core.quantity import format_memory, memory_bytes
from ..core.quotas import HomeVolume
from .failures import volume_call
from .pod import LABEL_PREFIX

log = logging.getLogger("dcloud")

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


CONFLICT_TRIES = 3  # reads and patches of the size while other starts grow the same claim (shared homes)


async def grow(spawner: Any, plan: Plan, most: int | None, groups: list[str]) -> str | None:
    """Make the claim at least ``plan.home_bytes`` (with no size asked, as large as it is: never
    smaller) and mark it with ``groups``; return what was done for the progress page.

    Raises a :class:`~..core.errors.Refusal`: shrinking, an unbound claim or a class that cannot
    expand (nothing changed then), or an error answer of the API server in one sentence."""
    if plan.home_bytes is None or not spawner.storage_pvc_ensure:
        return None
    for attempt in range(CONFLICT_TRIES):
        with volume_call("home", "reading your home volume"):
            try:
                claim = await spawner.api.read_namespaced_persistent_volume_claim(
                    spawner.pvc_name, spawner.namespace, _request_timeout=spawner.k8s_api_request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return None  # KubeSpawner creates it at the chosen size (its class was checked before)
                raise
        requested = (claim.spec.resources.requests or {}).get("storage")
        current = memory_bytes(requested) if requested else 0
        # a start that named no size takes the volume as it is (a second server may have grown it)
        asked = max(plan.home_bytes, current) if plan.home_defaulted else plan.home_bytes
        if asked < current:
            raise refusals.home_only_grows(asked, current, most)
        wanted = metadata(groups)
        marks = wanted if any(
            (getattr(claim.metadata, kind) or {}).get(key) != value
            for kind, pairs in wanted.items()
            for key, value in pairs.items()
        ) else None
        if asked == current:
            if marks is not None:
                await _mark(spawner, marks)
            return None
        if (claim.status.phase if claim.status else None) != "Bound":
            raise refusals.home_not_bound(asked, current)  # the API server resizes bound claims only
        storage_class = claim.spec.storage_class_name
        with volume_call("home", "reading the storage class of your home volume"):
            expandable = await _expandable(spawner, storage_class)
        if not expandable:
            raise refusals.home_cannot_grow(current, storage_class)
        size = format_memory(asked)
        # resourceVersion: the patch applies only to the claim as read, so two starts of a shared
        # home never race (the smaller, applied last, would be refused as a shrink)
        patch = {"metadata": {**(marks or {}), "resourceVersion": claim.metadata.resource_version},
                 "spec": {"resources": {"requests": {"storage": size}}}}
        with volume_call("home", f"growing your home volume to {size}"):
            try:
                await spawner.api.patch_namespaced_persistent_volume_claim(
                    spawner.pvc_name, spawner.namespace, patch, _request_timeout=spawner.k8s_api_request_timeout)
            except ApiException as exc:
                if exc.status == 409 and attempt < CONFLICT_TRIES - 1:
                    continue  # changed since it was read: read it again and decide again
                raise
        break
    said = f"Growing your home volume from {format_memory(current)} to {size}"
    doing = f"reading your home volume as it grows to {size}"
    with volume_call("home", doing):
        try:
            resized = await _resized(spawner, asked, spawner.home_resize_wait_seconds)
        except ValueError:  # a capacity that is no quantity
            raise refusals.volume_api_error("home", doing, "a size DCloud cannot read") from None
    if not resized:
        said = (f"{said}; the storage driver has not finished yet, so your home shows its new size "
                "once it has (a volume that grows offline: after your next start)")
    return said


async def _mark(spawner: Any, marks: dict[str, dict[str, str]]) -> None:
    """Patch DCloud's marks alone onto the claim. Marking never ends a start: a site whose hub may
    not patch claims still starts its users' servers (its group quotas miss the claim)."""
    try:
        await spawner.api.patch_namespaced_persistent_volume_claim(
            spawner.pvc_name, spawner.namespace, {"metadata": marks}, _request_timeout=spawner.k8s_api_request_timeout)
    except (ApiException, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("DCloud: could not mark the home volume %s with its owner's groups, so group quotas do not "
                    "count it: %s", spawner.pvc_name, exc)


RESIZE_POLL = 0.5  # seconds between reads of the claim while it grows


async def _resized(spawner: Any, size: int, bound: float) -> bool:
    """Whether the driver grew the claim to ``size`` (or left only the node's part) within ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        claim = await spawner.api.read_namespaced_persistent_volume_claim(
            spawner.pvc_name, spawner.namespace, _request_timeout=spawner.k8s_api_request_timeout)
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
    timeout = spawner.k8s_api_request_timeout
    try:
        if name:
            found = await storage.read_storage_class(name, _request_timeout=timeout)
        else:
            classes = (await storage.list_storage_class(_request_timeout=timeout)).items
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
