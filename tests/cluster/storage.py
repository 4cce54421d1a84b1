"""Volumes for the test cluster: a real dynamic provisioner, a default StorageClass and a
resizer, with each volume's size enforced by a file system of exactly that size.

Whenever real-0 runs, ``up`` starts two more detached host processes (pids in ``state.json``,
output in ``logs/``, stopped by ``down``, restarted by ``up`` when they died):

- Rancher's local-path-provisioner v0.0.30 (built by build.sh), out of cluster with its own
  client certificate. It serves the default StorageClass :data:`CLASS`
  (``WaitForFirstConsumer``, ``allowVolumeExpansion``, volumes only on real-0): when a pod on
  real-0 uses a claim of the class, it runs a helper pod there (image ``images.VOLUME_HELPER``)
  with volume-setup.sh, which makes the volume an ext4 file system in an image file of exactly the
  requested size, loop-mounted beside the volume's path, which links into it, so writes past the
  size fail with ENOSPC. The PersistentVolume is a ``local`` volume at that path. When the claim
  is deleted, volume-teardown.sh unmounts it and removes the image.
- resizer.py, which grows a volume when its claim asks for more, as a CSI resizer would
  (volumes.py: online where the host allows it, else once no pod uses the claim).

Mount propagation: the helper mounts inside its own container. ``<run>/volumes`` is a bind mount
of itself made shared, and the helper's container mounts it ``Bidirectional`` (privileged), at
the same path, so its loop mount appears on the host, where the kubelet (which runs in the
host's mount namespace) bind-mounts the volume into the user's pod, and where the resizer grows
it. :func:`release` unmounts all of it, so ``down`` leaves no mount and no loop device behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import control_plane, fleet, kubeconfig, node, volumes
from .control_plane import State
from .kueue import request
from .layout import RunDir, bin_dir
from .pki import Pki, issue

PROVISIONER_PROCESS = "local-path-provisioner"  # in state.json and logs/
RESIZER_PROCESS = "volume-resizer"
PROCESSES = (PROVISIONER_PROCESS, RESIZER_PROCESS)
CLASS = "dcloud-local"
PROVISIONER = "dcloud.test/local-path"  # the StorageClass's provisioner: ours, not rancher.io's
NAMESPACE = "local-path-storage"  # where the helper pods run (privileged)
CONFIG_MAP = "local-path-config"  # the setup and teardown scripts the helper pods mount
SERVICE_ACCOUNT = "local-path-provisioner-service-account"
HELPER = "volume-helper"  # helper pods are named volume-helper-<create|delete>-<pv>
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
SOURCE = "storage"  # fleet.SOURCE_LABEL of what this module creates
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPTS = {"setup": HERE / "volume-setup.sh", "teardown": HERE / "volume-teardown.sh"}
# Tools of the host that storage needs: the bind mount, and the resizer's growing.
HOST_TOOLS = ("mount", "umount", "losetup", "e2fsck", "resize2fs")
# Each process's own user, so the audit log and managedFields tell who changed what.
USERS = {PROVISIONER_PROCESS: "dcloud-test:local-path-provisioner", RESIZER_PROCESS: "dcloud-test:volume-resizer"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class StorageDir:
    root: Path

    @property
    def config(self) -> Path:
        """The provisioner's configuration: real-0's volume folder (nodePathMap)."""
        return self.root / "config.json"

    @property
    def helper_pod(self) -> Path:
        return self.root / "helper-pod.yaml"

    def kubeconfig(self, process: str) -> Path:
        return self.root / f"{process}.kubeconfig"

    @property
    def unavailable(self) -> Path:
        return self.root / "unavailable"


# --- what runs where --------------------------------------------------------------------------


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def unavailable_reason(run: RunDir) -> str | None:
    """Why this cluster gets no provisioner, or None."""
    if node.running(run) is None:
        return f"node {node.NAME} is not running ({node.unavailable_note(run) or 'see its log'}); volumes live there"
    if not os.access(bin_dir() / PROVISIONER_PROCESS, os.X_OK):
        return f"{PROVISIONER_PROCESS} is not built ({bin_dir() / PROVISIONER_PROCESS}; run tests/cluster/build.sh)"
    if missing := [tool for tool in HOST_TOOLS if shutil.which(tool, path=_sbin_path()) is None]:
        return f"missing on this machine: {', '.join(missing)} (util-linux, e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices on this machine (/dev/loop-control; the loop module)"
    return None


def configuration(run: RunDir) -> dict[str, Any]:
    """local-path-provisioner's config.json: volumes on real-0 only, under ``<run>/volumes``;
    any other node has no path, so a claim there fails to provision, loudly."""
    return {"nodePathMap": [{"node": node.NAME, "paths": [str(run.volumes)]}], "cmdTimeoutSeconds": 120}


def helper_pod() -> dict[str, Any]:
    """The helper pod's template. The provisioner adds the node, a toleration of every taint,
    the volumes folder (volume ``data``, mounted at its host path) and the scripts."""
    images = node._images_module()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": HELPER, "labels": {fleet.SOURCE_LABEL: SOURCE}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "helper-pod",  # the name the provisioner reads logs from
                    "image": images.VOLUME_HELPER,
                    "imagePullPolicy": "Never",
                    # mount and loop devices need it; so does Bidirectional propagation
                    "securityContext": {"privileged": True},
                    "volumeMounts": [
                        {"name": "data", "mountPath": "", "mountPropagation": "Bidirectional"},
                        # the host's /dev: loop devices created after the container started
                        {"name": "dev", "mountPath": "/dev"},
                    ],
                }
            ],
            "volumes": [{"name": "dev", "hostPath": {"path": "/dev", "type": "Directory"}}],
        },
    }


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            # local-path-provisioner's setting: `local` volumes, not `hostPath` (DirectoryOrCreate).
            # The kubelet then refuses to start a pod while the volume's path is missing (as it is
            # while volumes.py grows it offline) instead of handing it an empty folder.
            "annotations": {DEFAULT_CLASS: "true", "defaultVolumeType": "local"},
            "labels": {fleet.SOURCE_LABEL: SOURCE},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # The node is known before the volume is made: the scheduler picks it, the helper runs there.
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": True,  # resizer.py
        # Only real-0 holds volumes: a pod that cannot go there waits unschedulable, and says so.
        "allowedTopologies": [{"matchLabelExpressions": [{"key": "kubernetes.io/hostname", "values": [node.NAME]}]}],
    }


def _rbac() -> list[dict[str, Any]]:
    """What each process may do: upstream's provisioner role (claims, volumes, classes, nodes,
    events; helper pods and the script ConfigMap in its namespace) and a CSI resizer's."""
    rbac = "rbac.authorization.k8s.io/v1"
    labels = {fleet.SOURCE_LABEL: SOURCE}
    read = ["get", "list", "watch"]
    write = [*read, "create", "delete", "update", "patch"]
    cluster_rules = {
        PROVISIONER_PROCESS: [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": read},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": [*read, "update", "patch"]},
            {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": write},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": read},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        ],
        RESIZER_PROCESS: [
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": read},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims/status"], "verbs": ["patch", "update"]},
            {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},  # who uses a claim
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }  # fmt: skip
    objects: list[dict[str, Any]] = []
    for process, rules in cluster_rules.items():
        name, subject = (
            USERS[process],
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USERS[process]}],
        )
        objects += [
            {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name, "labels": labels}, "rules": rules},
            {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": name, "labels": labels},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": subject},
        ]  # fmt: skip
    name = USERS[PROVISIONER_PROCESS]
    meta = {"name": name, "namespace": NAMESPACE, "labels": labels}
    objects += [
        {"apiVersion": rbac, "kind": "Role", "metadata": meta, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": [*read, "create", "delete"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": read},
        ]},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}]},
    ]  # fmt: skip
    return objects


def objects() -> list[dict[str, Any]]:
    """What the provisioner needs in the cluster (the class comes once it runs)."""
    labels = {fleet.SOURCE_LABEL: SOURCE}
    meta = {"namespace": NAMESPACE, "labels": labels}
    scripts = {key: path.read_text() for key, path in SCRIPTS.items()}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            **labels, "pod-security.kubernetes.io/enforce": "privileged"}}},  # the helper is privileged
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, **meta},
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, **meta}, "data": scripts},
        *_rbac(),
    ]  # fmt: skip


# --- applying ---------------------------------------------------------------------------------

PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "StorageClass": "storageclasses",
}
FIELD_MANAGER = "dcloud-test-harness"


def _path(obj: dict[str, Any]) -> str:
    version, meta = obj["apiVersion"], obj["metadata"]
    path = "/api/v1" if version == "v1" else f"/apis/{version}"
    if "namespace" in meta:
        path += f"/namespaces/{meta['namespace']}"
    return f"{path}/{PLURALS[obj['kind']]}/{meta['name']}"


def apply(api: client.ApiClient, obj: dict[str, Any]) -> None:
    """Server-side apply; a StorageClass whose immutable fields changed is made anew."""
    path = f"{_path(obj)}?fieldManager={FIELD_MANAGER}&force=true"
    try:
        request(api, "PATCH", path, body=obj, content_type="application/apply-patch+yaml")
    except ApiException as error:
        if error.status != 422 or obj["kind"] != "StorageClass":
            raise
        request(api, "DELETE", _path(obj))
        request(api, "PATCH", path, body=obj, content_type="application/apply-patch+yaml")


def _delete_class(api: client.ApiClient) -> None:
    """No provisioner, no default class: a claim then waits visibly instead of on nobody."""
    storage = client.StorageV1Api(api)
    try:
        found = storage.read_storage_class(CLASS)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    if (found.metadata.labels or {}).get(fleet.SOURCE_LABEL) == SOURCE:
        storage.delete_storage_class(CLASS)


# --- the shared volumes folder ----------------------------------------------------------------


def _share(folder: Path) -> None:
    """Make ``folder`` a shared mount (a bind mount of itself), so that mounts made beneath it
    in a Bidirectional container propagate back. Only this folder changes; ``/`` stays private."""
    folder.mkdir(parents=True, exist_ok=True)
    point = str(folder.resolve())
    mounts = {p: optional for p, optional, _source in volumes.mounts()}
    if point not in mounts:
        _check(["mount", "--bind", point, point])
        mounts[point] = ""
    if "shared:" not in mounts[point]:
        _check(["mount", "--make-shared", point])


def _check(argv: list[str]) -> None:
    argv = [shutil.which(argv[0], path=_sbin_path()) or argv[0], *argv[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def release(run: RunDir, log: Log) -> list[str]:
    """Stop the provisioner and the resizer, unmount every volume and the shared folder, and
    detach the volumes' loop devices; returns the names of the processes that were running.
    Safe when nothing is there. Raises when something stays mounted (nothing is deleted then)."""
    stopped = _stop_processes(run)
    if not run.volumes.exists():
        return stopped
    devices = volumes.loop_devices(run.volumes)
    node._unmount_all(run.volumes)
    for device in devices.values():
        # Normally gone with the last unmount; one held elsewhere is detached once it is free.
        if volumes.attached(device):
            losetup = shutil.which("losetup", path=_sbin_path()) or "losetup"
            subprocess.run([losetup, "--detach", device], capture_output=True, check=False)
    if devices:
        log(f"unmounted {len(devices)} volume(s) of {node.NAME} ({', '.join(sorted(devices.values()))})")
    return stopped


# --- processes --------------------------------------------------------------------------------


def _provisioner_argv(sdir: StorageDir) -> list[str]:
    images = node._images_module()
    return [
        str(bin_dir() / PROVISIONER_PROCESS),
        "--debug",
        "start",
        f"--kubeconfig={sdir.kubeconfig(PROVISIONER_PROCESS)}",
        f"--config={sdir.config}",  # a path ending in .json: read from the file
        f"--helper-pod-file={sdir.helper_pod}",
        f"--provisioner-name={PROVISIONER}",
        f"--namespace={NAMESPACE}",
        f"--configmap-name={CONFIG_MAP}",
        f"--service-account-name={SERVICE_ACCOUNT}",
        f"--helper-image={images.VOLUME_HELPER}",
        "--worker-threads=2",
    ]


def _resizer_argv(run: RunDir, sdir: StorageDir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.cluster.resizer",
        f"--kubeconfig={sdir.kubeconfig(RESIZER_PROCESS)}",
        f"--storage-class={CLASS}",
        f"--volumes={run.volumes}",
    ]


def _credentials(run: RunDir, state: State, sdir: StorageDir, process: str) -> None:
    pki = Pki(run.pki)
    cert, key = sdir.root / f"{process}.crt", sdir.root / f"{process}.key"
    issue(pki, cert, key, common_name=USERS[process])
    kubeconfig.write(sdir.kubeconfig(process), server=state.server, ca_cert=pki.ca_cert, user=USERS[process],
                     client_cert=cert, client_key=key)  # fmt: skip


def _running(state: State, process: str) -> bool:
    return process in state.processes and not control_plane.dead(state, [process])


def _start(run: RunDir, state: State, sdir: StorageDir, process: str) -> None:
    _credentials(run, state, sdir, process)
    if process == PROVISIONER_PROCESS:
        # An empty environment: no KUBECONFIG or in-cluster variables of the caller's.
        info = control_plane.spawn(run, process, _provisioner_argv(sdir), env={})
    else:
        env = {"PATH": _sbin_path(), "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        info = control_plane.spawn(run, process, _resizer_argv(run, sdir), env=env)
    state.processes[process] = info
    state.save(run)


def _stop_processes(run: RunDir, grace: float = 10.0) -> list[str]:
    state = State.load(run)
    if state is None:
        return []
    stopped = []
    for process in PROCESSES:
        if not _running(state, process):
            continue
        pid = int(state.processes[process]["pid"])
        control_plane._signal(pid, signal.SIGTERM)
        if control_plane._wait_gone(state, {process}, grace):
            control_plane._signal(pid, signal.SIGKILL)
            if control_plane._wait_gone(state, {process}, 5.0):
                raise RuntimeError(f"{process} (pid {pid}) outlived SIGKILL")
        control_plane._reap(pid)
        stopped.append(process)
    return stopped


# --- life cycle -------------------------------------------------------------------------------


def ensure(run: RunDir, state: State, api: client.ApiClient, log: Log) -> str | None:
    """Start (or restart) the provisioner and the resizer and converge their objects and the
    default class, when real-0 runs. Returns why there is no storage, or None."""
    sdir = StorageDir(run.storage)
    sdir.root.mkdir(parents=True, exist_ok=True)
    if reason := unavailable_reason(run):
        for process in _stop_processes(run):
            log(f"stopped {process}")
        _delete_class(api)
        sdir.unavailable.write_text(reason + "\n")
        log(f"no volume provisioner: {reason}")
        return reason
    sdir.unavailable.unlink(missing_ok=True)
    began = time.monotonic()
    _share(run.volumes)
    sdir.config.write_text(json.dumps(configuration(run), indent=2))
    sdir.helper_pod.write_text(yaml.safe_dump(helper_pod(), sort_keys=False))
    for obj in objects():
        apply(api, obj)
    started = [process for process in PROCESSES if not _running(state, process)]
    for process in started:
        log(f"starting {process}" + (" again" if process in state.processes else ""))
        _start(run, state, sdir, process)
    if started:
        time.sleep(0.5)  # a bad flag or configuration ends the process at once
    if dead := control_plane.dead(state, PROCESSES):
        tails = "\n".join(control_plane._log_tail(run, name) for name in dead)
        raise RuntimeError(f"{', '.join(dead)} exited at start\n{tails}")
    apply(api, storage_class())
    log(f"volume provisioner and resizer ready in {time.monotonic() - began:.1f}s (class {CLASS}, {run.volumes})")
    return None


def running(run: RunDir) -> bool:
    """Whether the provisioner and the resizer both run."""
    state = State.load(run)
    return state is not None and all(_running(state, process) for process in PROCESSES)


def unavailable_note(run: RunDir) -> str | None:
    """The reason the last ``up`` in ``run`` gave for running no provisioner."""
    try:
        return StorageDir(run.storage).unavailable.read_text().strip()
    except OSError:
        return None


def describe(run: RunDir, state: State) -> str:
    """One line for ``python -m tests.cluster status``."""
    if all(_running(state, process) for process in PROCESSES):
        pids = ", ".join(f"{p} {state.processes[p]['pid']}" for p in PROCESSES)
        return f"storage: class {CLASS} (default), {pids}, volumes in {run.volumes}"
    return f"storage: not running ({unavailable_note(run) or 'the next `up` starts it'})"
