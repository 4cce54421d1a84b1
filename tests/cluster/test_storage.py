"""Volumes of the test cluster, for real: local-path-provisioner's claims on real-0 are ext4
images of their requested size, writes past it fail with ENOSPC, a larger claim grows its volume
(resizer.py), and a deleted claim leaves no image, mount or loop device behind.

The pods are restricted pods on real-0 in namespace dcloud, as DCloud's notebooks are; the claim
is grown with the hub's own credentials (helm-values/rbac.yaml), as DCloud's home_volume does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from tests.cluster import images, node, storage, volumes
from tests.cluster.fixture import KubeCluster, unavailable
from tests.cluster.layout import RunDir, bin_dir
from tests.support.real_node import NODE_SELECTOR, RESTRICTED, TOLERATIONS, require_real_node

pytestmark = pytest.mark.cluster

MI = 1024**2
SIZE = 64 * MI
GROWN = 96 * MI
MOUNT = "/data"
SCRIPTS = Path(storage.__file__).parent


def _wait(what: str, done: Callable[[], object], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@dataclass(frozen=True)
class Cluster:
    run: RunDir
    admin: Path
    core: client.CoreV1Api
    hub: client.CoreV1Api  # ServiceAccount dcloud/hub: the chart's Role and helm-values/rbac.yaml
    namespace: str


@pytest.fixture(scope="module")
def cluster(kube_cluster: KubeCluster) -> Iterator[Cluster]:
    """The harness's cluster with real-0 and its volume provisioner; skipped (failed with
    CI=true) where they cannot run."""
    run = require_real_node(kube_cluster).run
    if not storage.running(run):
        unavailable(f"no volume provisioner in the local cluster: {storage.unavailable_note(run) or 'not running'}")
    with (
        kube_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig) as admin,
        kube_config.new_client_from_config(config_file=kube_cluster.hub_kubeconfig) as hub,
    ):
        yield Cluster(run, Path(kube_cluster.admin_kubeconfig), client.CoreV1Api(admin), client.CoreV1Api(hub),
                      kube_cluster.namespace)  # fmt: skip


def _claim(c: Cluster, name: str, size: int) -> None:
    # No storageClassName: the default class is what KubeSpawner's home claim gets too.
    c.core.create_namespaced_persistent_volume_claim(c.namespace, {
        "metadata": {"name": name, "labels": {"dcloud.test/harness-test": "true"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": str(size)}}},
    })  # fmt: skip


def _pod(c: Cluster, name: str, claim: str) -> None:
    c.core.create_namespaced_pod(c.namespace, {
        "metadata": {"name": name, "labels": {"dcloud.test/harness-test": "true"}},
        "spec": {
            "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS, "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": images.NOTEBOOK_BASE, "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"], "securityContext": RESTRICTED,
                            "volumeMounts": [{"name": "home", "mountPath": MOUNT}]}],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}],
        },
    })  # fmt: skip

    def ready() -> bool:
        status = c.core.read_namespaced_pod(name, c.namespace).status
        return any(cond.type == "Ready" and cond.status == "True" for cond in status.conditions or [])

    _wait(f"pod {name} Ready", ready)


def _gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _delete_pod(c: Cluster, name: str) -> None:
    try:
        c.core.delete_namespaced_pod(name, c.namespace, grace_period_seconds=1)
    except ApiException as error:
        if error.status != 404:
            raise
    _wait(f"pod {name} gone", lambda: _gone(lambda: c.core.read_namespaced_pod(name, c.namespace)))


def _delete_claim(c: Cluster, name: str) -> str | None:
    """Delete the claim; wait until its volume is deleted too. Returns the volume's name."""
    try:
        volume = c.core.read_namespaced_persistent_volume_claim(name, c.namespace).spec.volume_name
        c.core.delete_namespaced_persistent_volume_claim(name, c.namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        return None
    _wait(
        f"claim {name} gone", lambda: _gone(lambda: c.core.read_namespaced_persistent_volume_claim(name, c.namespace))
    )
    if volume:
        _wait(f"volume {volume} gone", lambda: _gone(lambda: c.core.read_persistent_volume(volume)))
    return str(volume) if volume else None


def _sh(c: Cluster, pod: str, script: str) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir() / "kubectl"), f"--kubeconfig={c.admin}", "-n", c.namespace, "exec", pod, "--",
            "sh", "-c", script]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _df_bytes(c: Cluster, pod: str) -> int:
    """The file system's size as ``df`` in the pod shows it."""
    result = _sh(c, pod, f"df -B1 --output=size {MOUNT} | tail -n 1")
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def _volume_path(c: Cluster, claim: str) -> Path:
    name = c.core.read_namespaced_persistent_volume_claim(claim, c.namespace).spec.volume_name
    return Path(c.core.read_persistent_volume(name).spec.local.path)


@dataclass
class Volume:
    claim: str
    pod: str
    path: Path


@pytest.fixture(scope="module")
def volume(cluster: Cluster) -> Iterator[Volume]:
    """A claim of SIZE bytes and a restricted pod on real-0 that mounts it."""
    suffix = uuid.uuid4().hex[:6]
    claim, pod = f"home-{suffix}", f"user-{suffix}"
    _claim(cluster, claim, SIZE)
    try:
        # WaitForFirstConsumer: nothing is made until a pod needs it.
        time.sleep(1)
        pending = cluster.core.read_namespaced_persistent_volume_claim(claim, cluster.namespace)
        assert pending.status.phase == "Pending" and not pending.spec.volume_name
        assert pending.spec.storage_class_name == storage.CLASS  # the default class
        _pod(cluster, pod, claim)
        yield Volume(claim, pod, _volume_path(cluster, claim))
    finally:
        _delete_pod(cluster, pod)
        _delete_claim(cluster, claim)


def test_a_claim_binds_to_an_image_of_its_size_when_a_pod_on_real0_uses_it(cluster: Cluster, volume: Volume) -> None:
    claim = cluster.core.read_namespaced_persistent_volume_claim(volume.claim, cluster.namespace)
    assert claim.status.phase == "Bound" and claim.status.capacity["storage"] == str(SIZE)
    pv = cluster.core.read_persistent_volume(claim.spec.volume_name)
    assert pv.spec.storage_class_name == storage.CLASS and pv.spec.capacity["storage"] == str(SIZE)
    terms = pv.spec.node_affinity.required.node_selector_terms
    assert [e.values for t in terms for e in t.match_expressions] == [[node.NAME]]
    assert volume.path.parent == cluster.run.volumes.resolve()
    image = volumes.image_of(volume.path)
    assert image.stat().st_size == SIZE
    device = volumes.mount_source(volumes.mount_point_of(volume.path))
    assert device is not None and device.startswith("/dev/loop") and volumes.attached(device)
    assert volume.path.resolve() == volumes.mount_point_of(volume.path) / "data"  # the path links into it
    # df shows the file system: the image less ext4's own metadata (journal, inode tables)
    df = _df_bytes(cluster, volume.pod)
    assert 0.85 * SIZE < df <= SIZE, df


def test_writing_past_the_size_fails_with_no_space_left(cluster: Cluster, volume: Volume) -> None:
    result = _sh(cluster, volume.pod, f"dd if=/dev/zero of={MOUNT}/fill bs=1M count={SIZE // MI + 16}")
    try:
        assert result.returncode != 0
        assert "No space left on device" in result.stderr, result.stderr
        written = int(_sh(cluster, volume.pod, f"stat -c %s {MOUNT}/fill").stdout)
        assert 0.8 * SIZE < written < SIZE  # it stopped at the volume's end, not the host disk's
    finally:
        assert _sh(cluster, volume.pod, f"rm -f {MOUNT}/fill").returncode == 0


def test_a_larger_claim_grows_the_volume_and_keeps_its_files(cluster: Cluster, volume: Volume) -> None:
    token = secrets.token_hex(8)
    assert _sh(cluster, volume.pod, f"echo {token} > {MOUNT}/kept").returncode == 0
    before = _df_bytes(cluster, volume.pod)
    # The request DCloud's home_volume.grow sends, with the hub's own credentials.
    cluster.hub.patch_namespaced_persistent_volume_claim(
        volume.claim, cluster.namespace, {"spec": {"resources": {"requests": {"storage": str(GROWN)}}}}
    )

    def capacity() -> int:
        claim = cluster.core.read_namespaced_persistent_volume_claim(volume.claim, cluster.namespace)
        return int(parse_quantity(claim.status.capacity["storage"]))

    pod = volume.pod
    if not volumes.can_grow_online():  # as on the 2-core VMs: it waits until no pod uses the claim
        _wait("the resizer to say it waits", lambda: any(
            e.reason == "VolumeResizePending" and e.source.component == "dcloud-test-volume-resizer"
            for e in cluster.core.list_namespaced_event(
                cluster.namespace, field_selector=f"involvedObject.name={volume.claim}").items))  # fmt: skip
        assert capacity() == SIZE and _df_bytes(cluster, pod) == before
        _delete_pod(cluster, pod)
        _wait("the claim's capacity to grow", lambda: capacity() == GROWN, timeout=60)
        pod = f"{pod}-again"
        _pod(cluster, pod, volume.claim)
    else:
        _wait("the claim's capacity to grow", lambda: capacity() == GROWN, timeout=60)
    try:
        pv = cluster.core.read_persistent_volume(
            cluster.core.read_namespaced_persistent_volume_claim(volume.claim, cluster.namespace).spec.volume_name
        )
        assert pv.spec.capacity["storage"] == str(GROWN)
        assert volumes.image_of(volume.path).stat().st_size == GROWN
        after = _df_bytes(cluster, pod)
        assert before + 0.85 * (GROWN - SIZE) < after <= GROWN, (before, after)
        assert _sh(cluster, pod, f"cat {MOUNT}/kept").stdout.strip() == token
        # More than the old size fits now; the new size still ends it.
        assert _sh(cluster, pod, f"dd if=/dev/zero of={MOUNT}/more bs=1M count={SIZE // MI + 8}").returncode == 0
        full = _sh(cluster, pod, f"dd if=/dev/zero of={MOUNT}/full bs=1M count={GROWN // MI}")
        assert full.returncode != 0 and "No space left on device" in full.stderr, full.stderr
    finally:
        _sh(cluster, pod, f"rm -f {MOUNT}/more {MOUNT}/full")
        if pod != volume.pod:
            _delete_pod(cluster, pod)


def _loop_backings() -> set[tuple[str, int]]:
    """(device number, inode) of the file behind each attached loop device."""
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-MAJ:MIN,BACK-INO"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    devices = json.loads(out or '{"loopdevices": []}')["loopdevices"]
    return {(str(d["back-maj:min"]).strip(), int(d["back-ino"])) for d in devices if d.get("back-ino")}


def test_deleting_the_claim_removes_the_image_mount_and_loop_device(cluster: Cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    claim, pod = f"gone-{suffix}", f"gone-{suffix}"
    _claim(cluster, claim, 16 * MI)
    try:
        _pod(cluster, pod, claim)
        path = _volume_path(cluster, claim)
        image = volumes.image_of(path)
        stat = image.stat()
        backing = (f"{os.major(stat.st_dev)}:{os.minor(stat.st_dev)}", stat.st_ino)
        assert backing in _loop_backings() and volumes.mount_source(volumes.mount_point_of(path)) is not None
    finally:
        _delete_pod(cluster, pod)
        volume = _delete_claim(cluster, claim)
    assert volume is not None
    assert not image.exists() and not os.path.lexists(path)
    point = volumes.mount_point_of(path)
    assert volumes.mount_source(point) is None and not point.exists()
    # The loop device detaches itself once the last mount is gone (autoclear).
    _wait("the loop device to detach", lambda: backing not in _loop_backings(), timeout=30)


def test_a_pod_that_cannot_go_to_real0_waits_unschedulable_with_a_reason(cluster: Cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    name = f"elsewhere-{suffix}"
    _claim(cluster, name, 16 * MI)
    try:
        cluster.core.create_namespaced_pod(cluster.namespace, {
            "metadata": {"name": name},
            "spec": {"automountServiceAccountToken": False, "nodeSelector": {"dcloud.test/pool": "cpu"},
                     "containers": [{"name": "c", "image": images.NOTEBOOK_BASE, "securityContext": RESTRICTED}],
                     "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": name}}]},
        })  # fmt: skip

        def unschedulable() -> str | None:
            conditions = cluster.core.read_namespaced_pod(name, cluster.namespace).status.conditions or []
            return next(
                (c.message for c in conditions if c.type == "PodScheduled" and c.reason == "Unschedulable"), None
            )

        _wait("the scheduler's verdict", unschedulable, timeout=30)
        assert "didn't find available persistent volumes to bind" in (unschedulable() or "")
        assert cluster.core.read_namespaced_persistent_volume_claim(name, cluster.namespace).status.phase == "Pending"
    finally:
        _delete_pod(cluster, name)
        _delete_claim(cluster, name)


def _may(c: Cluster, verb: str, resource: str, namespace: str | None = None, subresource: str = "") -> bool:
    review = client.AuthorizationV1Api(c.core.api_client).create_subject_access_review({
        "spec": {"user": f"system:serviceaccount:{c.namespace}:hub", "resourceAttributes": {
            "verb": verb, "group": "storage.k8s.io" if resource == "storageclasses" else "", "resource": resource,
            "subresource": subresource, **({"namespace": namespace} if namespace else {})}},
    })  # fmt: skip
    return bool(review.status.allowed)


def test_the_hub_may_grow_claims_and_read_classes_no_more(cluster: Cluster) -> None:
    # helm-values/rbac.yaml on top of the chart's Role: what home_volume.grow needs ...
    assert _may(cluster, "patch", "persistentvolumeclaims", cluster.namespace)
    assert _may(cluster, "get", "storageclasses") and _may(cluster, "list", "storageclasses")
    # ... and nothing more: only its own namespace, not the status, not the classes themselves.
    assert not _may(cluster, "patch", "persistentvolumeclaims", "default")
    assert not _may(cluster, "update", "persistentvolumeclaims", cluster.namespace)
    assert not _may(cluster, "patch", "persistentvolumeclaims", cluster.namespace, subresource="status")
    assert not _may(cluster, "create", "storageclasses") and not _may(cluster, "patch", "storageclasses")
    assert not _may(cluster, "patch", "persistentvolumes")


# --- on the host: growing offline never touches a file system in use ------------------------


@pytest.fixture
def host_volume(tmp_path: Path) -> Iterator[Path]:
    """A volume made by volume-setup.sh right on this machine (needs root and loop devices)."""
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        unavailable("making a volume needs root and loop devices")
    path = tmp_path / "vol"
    env = {**os.environ, "VOL_DIR": str(path), "VOL_MODE": "Filesystem", "VOL_SIZE_BYTES": str(16 * MI),
           "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}  # fmt: skip
    subprocess.run(["sh", str(SCRIPTS / "volume-setup.sh")], env=env, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["sh", str(SCRIPTS / "volume-teardown.sh")], env=env, check=True, capture_output=True)


def test_offline_growth_waits_while_anything_else_has_the_volume_mounted(host_volume: Path, tmp_path: Path) -> None:
    (host_volume / "kept").write_text("data")
    point = volumes.mount_point_of(host_volume)
    device = volumes.mount_source(point)
    assert device is not None
    size = volumes.filesystem_bytes(point)
    # Mounted a second time here ...
    second = tmp_path / "second"
    second.mkdir()
    subprocess.run(["mount", device, str(second)], check=True)
    try:
        with pytest.raises(volumes.VolumeBusy):
            volumes.grow_offline(host_volume, 32 * MI)
    finally:
        subprocess.run(["umount", str(second)], check=True)
    assert volumes.mount_source(point) == device and volumes.filesystem_bytes(point) == size
    # ... or mounted in another mount namespace, as a container's bind mount of it is.
    elsewhere = tmp_path / "container"
    elsewhere.mkdir()
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f'mount --bind "{host_volume}" "{elsewhere}" && exec sleep 60'])  # fmt: skip

    def holds() -> bool:
        return str(elsewhere) in Path(f"/proc/{holder.pid}/mountinfo").read_text()

    try:
        _wait("the bind mount in the other mount namespace", holds, timeout=10)
        with pytest.raises(volumes.VolumeBusy):
            volumes.grow_offline(host_volume, 32 * MI)
        assert volumes.mount_source(point) == device
        assert volumes.filesystem_bytes(point) == size and (host_volume / "kept").read_text() == "data"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Nothing else has it now (a mere copy of the host's mounts in another namespace, from a
    # process that unshared them, does not count): it grows, with its files.
    copy = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    try:
        _wait(
            "a copy of the mounts", lambda: os.readlink(f"/proc/{copy.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        )
        grown = volumes.grow_offline(host_volume, 32 * MI)
    finally:
        copy.send_signal(signal.SIGKILL)
        copy.wait()
    assert grown > size and grown == volumes.filesystem_bytes(point)
    assert volumes.image_of(host_volume).stat().st_size == 32 * MI
    assert (host_volume / "kept").read_text() == "data"
