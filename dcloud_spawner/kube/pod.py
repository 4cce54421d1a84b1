"""The notebook pod: a Plan expressed as KubeSpawner traits.

The pod itself is built by KubeSpawner's ``get_pod_manifest``; this module only decides
the traits it reads. Values derived from the plan never pass through a shell.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..core import package_envs
from ..core.catalog import HOME_DIR, PACKAGES_DIR, SCRATCH_DIR  # the catalog keeps datasets off them
from ..core.plan import Plan
from ..core.quantity import format_memory
from .security import RESTRICTED_CONTAINER, installer_uid

LABEL_PREFIX = "dcloud.io"

# Traits this module sets. One spawner object serves many starts with different choices,
# so each start begins from their configured values (restored when JupyterHub clears the
# state, before its hooks run); the hooks' changes are kept and the plan merged on top.
PLANNED_TRAITS = (
    "image",
    "cpu_limit",
    "cpu_guarantee",
    "mem_limit",
    "mem_guarantee",
    "extra_resource_limits",
    "extra_resource_guarantees",
    "node_selector",
    "tolerations",
    "volumes",
    "volume_mounts",
    "init_containers",
    "environment",
    "extra_labels",
    "extra_annotations",
    "storage_capacity",
    "storage_class",
    "storage_extra_labels",
    "storage_extra_annotations",
)

EPHEMERAL = "ephemeral-storage"
PACKAGES_SIZE = 10 * 1024**3  # the package emptyDir's sizeLimit


def literal(value: Any) -> Any:
    """Escape braces: KubeSpawner runs str.format over labels, annotations, env, volumes
    and init containers to expand {username}; plan values must come through verbatim."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    return value


def _as_list(value: Any) -> list:
    """KubeSpawner accepts lists or dicts (sorted by key) for several traits."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    return list(value or [])


def dataset_volume(plan_dataset: Any, name: str) -> dict[str, Any]:
    source = plan_dataset.source
    if source.type == "pvc":
        return {
            "name": name,
            "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True},
        }
    if source.type == "nfs":
        if source.csi_driver:
            return {
                "name": name,
                "csi": {
                    "driver": source.csi_driver,
                    "readOnly": True,
                    "volumeAttributes": {"server": source.server, "share": source.path},
                },
            }
        return {"name": name, "nfs": {"server": source.server, "path": source.path, "readOnly": True}}
    return {"name": name, "hostPath": {"path": source.path, "type": "Directory"}}


PACKAGE_INSTALLER = "dcloud-packages"


def package_installer(plan: Plan, pip_args: list[str], uid: int | None) -> dict[str, Any]:
    """Init container that pip-installs the plan's packages into the shared volume.

    Same image as the notebook, so wheels match its Python; argv list, no shell. It hides
    GPUs itself: a package's build code never needs one, and on a GPU server the notebook
    image may not set ``NVIDIA_VISIBLE_DEVICES``, so the NVIDIA runtime would expose all of
    the node's GPUs to code the user chose.
    """
    return {
        "name": PACKAGE_INSTALLER,
        "image": plan.image,
        "command": plan.pip_install_command(target=PACKAGES_DIR, admin_args=pip_args),
        # pip's last lines become the termination message, so a failure can be told in words
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "PIP_NO_WARN_SCRIPT_LOCATION", "value": "1"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
        ],
        "volumeMounts": [{"name": "dcloud-packages", "mountPath": PACKAGES_DIR}],
        "securityContext": {
            **copy.deepcopy(RESTRICTED_CONTAINER), **({"runAsUser": uid} if uid is not None else {}),
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
    }


def home_package_installer(plan: Plan, pip_args: list[str], uid: int | None, home: dict[str, Any]) -> dict[str, Any]:
    """Init container that makes (or reuses) the plan's package environment on the user's home
    volume (``home``: the notebook's mount of it), so packages persist across starts."""
    key = package_env_key(plan, pip_args)
    envs = f"{HOME_DIR}/{package_envs.ENVS_DIR}"
    pip = plan.pip_install_command(admin_args=pip_args, cache=True)
    mount = {"name": home["name"], "mountPath": HOME_DIR}
    if home.get("subPath"):
        mount["subPath"] = home["subPath"]
    container = package_installer(plan, pip_args, uid)
    container.update(
        command=package_envs.installer_argv("python", envs, key, plan.package_environments, pip),
        env=[
            {"name": "HOME", "value": HOME_DIR},
            {"name": "PIP_CACHE_DIR", "value": f"{HOME_DIR}/{package_envs.PIP_CACHE_DIR}"},
            {"name": "PIP_NO_WARN_SCRIPT_LOCATION", "value": "1"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
            # "built <key>" or "reused <key>" becomes the container's termination message
            {"name": "DCLOUD_INSTALL_REPORT", "value": "/dev/termination-log"},
        ],
        volumeMounts=[mount],
    )
    return container


def package_env_key(plan: Plan, pip_args: list[str]) -> str:
    return package_envs.env_key(plan.image, plan.packages, plan.package_index_url, pip_args)


def home_mount(spawner: Any) -> dict[str, Any] | None:
    """The notebook's mount of a volume at the home directory (the chart's home claim), if any."""
    return next((m for m in _as_list(spawner.volume_mounts)
                 if isinstance(m, dict) and m.get("mountPath") == HOME_DIR and m.get("name")), None)


def scratch_volume(plan: Plan) -> dict[str, Any] | None:
    """/scratch: a generic ephemeral volume on the catalog's class (a claim made and deleted
    with the pod), else an emptyDir whose sizeLimit the kubelet enforces by eviction."""
    if plan.scratch_bytes is None or plan.storage is None or plan.storage.scratch is None:
        return None
    size = format_memory(plan.scratch_bytes)
    storage_class = plan.storage.scratch.storage_class
    if storage_class is None:
        return {"name": "dcloud-scratch", "emptyDir": {"sizeLimit": size}}
    return {"name": "dcloud-scratch", "ephemeral": {"volumeClaimTemplate": {
        "metadata": {"labels": {f"{LABEL_PREFIX}/volume": "scratch"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                 "resources": {"requests": {"storage": size}}},
    }}}


def ephemeral_storage(plan: Plan, packages_in_pod: bool = True) -> tuple[str, str] | None:
    """The notebook container's ephemeral-storage (limit, request). The kubelet evicts a pod
    whose containers and emptyDirs together use more than its containers' limits, so an
    emptyDir scratch disk and the package emptyDir are added to the catalog's allowance
    for the writable layer and logs (the scheduler then reserves the scratch on the node)."""
    if plan.storage is None or plan.storage.ephemeral is None:
        return None
    limit, request = plan.storage.ephemeral.limit, plan.storage.ephemeral.request
    scratch = scratch_volume(plan)
    if scratch is not None and "emptyDir" in scratch:
        limit += plan.scratch_bytes or 0
        request += plan.scratch_bytes or 0
    if plan.packages and packages_in_pod:
        limit += PACKAGES_SIZE
    return format_memory(limit), format_memory(request)


def labels_for(plan: Plan) -> dict[str, str]:
    """Label values must match [A-Za-z0-9_.-]{0,63}; catalog ids already do."""
    labels = {f"{LABEL_PREFIX}/environment": plan.environment.id}
    if plan.gpu:
        labels[f"{LABEL_PREFIX}/gpu-class"] = plan.gpu.id
        labels[f"{LABEL_PREFIX}/gpu-count"] = str(plan.gpu_count)
    else:
        labels[f"{LABEL_PREFIX}/gpu-class"] = "none"
        labels[f"{LABEL_PREFIX}/gpu-count"] = "0"
    for dataset in plan.datasets:
        labels[f"dataset.{LABEL_PREFIX}/{dataset.id}"] = "true"
    return labels


def _without(entries: list, plan_entries: list, *keys: str) -> list:
    """``entries`` less those that clash with the plan's on any of ``keys`` (the plan wins)."""
    taken = {(key, entry.get(key)) for entry in plan_entries for key in keys if isinstance(entry, dict)}
    return [e for e in entries if not (isinstance(e, dict) and any((k, e.get(k)) in taken for k in keys))]


@dataclass
class _Parts:
    """What the plan adds to the pod, gathered before it is merged onto the traits."""

    volumes: list = field(default_factory=list)
    mounts: list = field(default_factory=list)
    init_containers: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    guarantees: dict = field(default_factory=dict)


def apply_plan(spawner: Any, plan: Plan, image_path: str, pip_args: list[str],
               gpu_resources: Collection[str] = ()) -> None:
    """Merge ``plan`` onto ``spawner``'s pod traits as the admin's config and this start's
    hooks left them. The plan wins on what the catalog owns: the image, CPU and memory,
    GPU resources (``gpu_resources``: every class's, so no hook grants a GPU the plan did
    not), and the plan's own environment variables, volumes, mounts, labels and annotations."""
    spawner.image = plan.image
    spawner.cpu_limit = plan.cpu_limit
    spawner.cpu_guarantee = plan.cpu_request
    spawner.mem_limit = plan.memory_limit
    spawner.mem_guarantee = plan.memory_request

    parts = _Parts(environment=literal(plan.environment_variables()))
    _place(spawner, plan, parts)
    _mount_shm_and_datasets(plan, parts)
    home = home_mount(spawner)
    if plan.packages:
        uid = spawner.uid(spawner) if callable(spawner.uid) else spawner.uid
        _install_packages(plan, pip_args, installer_uid(uid), home, image_path, parts)
    _mark_package_env(spawner, bool(plan.packages) and home is not None, parts)
    _add_storage(spawner, plan, packages_in_pod=home is None, parts=parts)

    kept = {k: v for k, v in spawner.extra_resource_limits.items() if k not in gpu_resources}
    spawner.extra_resource_limits = {**kept, **parts.limits}
    kept = {k: v for k, v in spawner.extra_resource_guarantees.items() if k not in gpu_resources}
    spawner.extra_resource_guarantees = {**kept, **parts.guarantees}
    spawner.volumes = _without(_as_list(spawner.volumes), parts.volumes, "name") + parts.volumes
    spawner.volume_mounts = _without(_as_list(spawner.volume_mounts), parts.mounts, "name", "mountPath") + parts.mounts
    spawner.init_containers = (_without(_as_list(spawner.init_containers), parts.init_containers, "name")
                               + parts.init_containers)
    spawner.environment = {**spawner.environment, **parts.environment}
    spawner.extra_labels = {**spawner.extra_labels, **labels_for(plan)}
    spawner.extra_annotations = {
        **spawner.extra_annotations,
        **literal({
            f"{LABEL_PREFIX}/datasets": ",".join(d.id for d in plan.datasets),
            f"{LABEL_PREFIX}/packages": "\n".join(plan.packages),
            f"{LABEL_PREFIX}/summary": plan.summary(),
        }),
    }


def _place(spawner: Any, plan: Plan, parts: _Parts) -> None:
    """GPUs: the resource, the class's node selector and tolerations; none seen without one."""
    if plan.gpu is None:
        # A CPU server must not see GPUs even where the NVIDIA runtime is the default.
        parts.environment["NVIDIA_VISIBLE_DEVICES"] = "void"
        return
    count = str(plan.gpu_count)
    parts.limits[plan.gpu.resource] = parts.guarantees[plan.gpu.resource] = count
    spawner.node_selector = {**spawner.node_selector, **plan.gpu.node_selector}
    spawner.tolerations = _as_list(spawner.tolerations) + [t.manifest() for t in plan.gpu.tolerations]


def _mount_shm_and_datasets(plan: Plan, parts: _Parts) -> None:
    parts.volumes.append({
        "name": "dcloud-shm",
        "emptyDir": {"medium": "Memory", "sizeLimit": format_memory(plan.shm_bytes)},
    })
    parts.mounts.append({"name": "dcloud-shm", "mountPath": "/dev/shm"})
    for dataset in plan.datasets:
        name = f"dataset-{dataset.id}"
        parts.volumes.append(literal(dataset_volume(dataset, name)))
        parts.mounts.append(literal({"name": name, "mountPath": dataset.path_in_pod, "readOnly": True}))


def _install_packages(plan: Plan, pip_args: list[str], uid: int | None, home: dict[str, Any] | None,
                      image_path: str, parts: _Parts) -> None:
    if home is not None:  # persistent: built once on the home volume, reused after
        installer = home_package_installer(plan, pip_args, uid, home)
        # the mount is the admin's, not the plan's: its templates ("volume-{user_server}" in
        # Zero to JupyterHub's config) must expand as in the notebook's own mount of the volume
        parts.init_containers.append({**literal(installer), "volumeMounts": installer["volumeMounts"]})
        where = f"{HOME_DIR}/{package_envs.ENVS_DIR}/{package_env_key(plan, pip_args)}"
    else:  # no home volume: installed at every start into a volume of the pod's own
        parts.volumes.append({"name": "dcloud-packages", "emptyDir": {"sizeLimit": format_memory(PACKAGES_SIZE)}})
        parts.mounts.append({"name": "dcloud-packages", "mountPath": PACKAGES_DIR, "readOnly": True})
        parts.init_containers.append(literal(package_installer(plan, pip_args, uid)))
        where = PACKAGES_DIR
    parts.environment["PYTHONPATH"] = where
    parts.environment["PATH"] = literal(f"{where}/bin:{image_path}")


def _mark_package_env(spawner: Any, uses: bool, parts: _Parts) -> None:
    """This start's hold on its package environment on the home volume, which other servers may
    share (see core/package_envs.py): the installer marks it as in use under the start's token
    and drops the markers of the user's other servers' starts that are over."""
    marks = spawner.mark_package_env(uses)
    for container in parts.init_containers:
        if container["name"] == PACKAGE_INSTALLER:
            container["env"] += [{"name": name, "value": literal(value)} for name, value in marks.items()]


def _add_storage(spawner: Any, plan: Plan, packages_in_pod: bool, parts: _Parts) -> None:
    scratch = scratch_volume(plan)
    if scratch is not None:
        parts.volumes.append(scratch)
        parts.mounts.append({"name": "dcloud-scratch", "mountPath": SCRATCH_DIR})
    ephemeral = ephemeral_storage(plan, packages_in_pod=packages_in_pod)
    if ephemeral is not None and plan.storage is not None and plan.storage.ephemeral is not None:
        parts.limits[EPHEMERAL], parts.guarantees[EPHEMERAL] = ephemeral
        for container in parts.init_containers:
            container["resources"]["limits"][EPHEMERAL] = format_memory(plan.storage.ephemeral.limit)
            container["resources"]["requests"][EPHEMERAL] = format_memory(plan.storage.ephemeral.request)
    if plan.home_bytes is not None and plan.storage is not None and plan.storage.home is not None:
        # KubeSpawner's own home volume claim (storage_pvc_ensure): the size the user chose,
        # on the catalog's class
        spawner.storage_capacity = format_memory(plan.home_bytes)
        if plan.storage.home.storage_class:
            spawner.storage_class = plan.storage.home.storage_class
