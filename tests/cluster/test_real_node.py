"""Node real-0: a real kubelet, containerd and runc beside the KWOK fleet.

What only a real node can show: a restricted pod's process in a real container, ``kubectl logs``
and ``exec`` through a kubelet that authenticates the API server (and refuses anyone else), a
kubelet confined to its own node's objects, a clean teardown, and a second cluster on the same
machine that neither collides with this one nor leaves anything behind.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from tests.cluster import fleet, harness, host, node, volumes
from tests.cluster.fixture import KubeCluster
from tests.cluster.layout import K8S_VERSION, RunDir, bin_dir
from tests.cluster.pki import Pki
from tests.support.real_node import RESTRICTED, require_real_node

REPO_ROOT = Path(__file__).resolve().parents[2]
GREETING = "hello from a real container"
TOLERATIONS = [{"key": t["key"], "operator": "Exists", "effect": t["effect"]} for t in node.TAINTS]


@dataclass(frozen=True)
class RealNode:
    run: RunDir
    admin: client.CoreV1Api
    namespace: str
    state: node.NodeState


@pytest.fixture(scope="module")
def real_node(kube_cluster: KubeCluster) -> Iterator[RealNode]:
    """real-0 of the harness's cluster; skipped (failed with CI=true) where it cannot run."""
    run = require_real_node(kube_cluster).run
    state = node.running(run)
    assert state is not None
    with kube_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig) as api:
        yield RealNode(run, client.CoreV1Api(api), kube_cluster.namespace, state)


def _kubectl(kubeconfig: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _shell_image() -> str:
    """An image with a POSIX shell and coreutils, imported into real-0 by ``up``: the notebook
    stand-in (Debian) of tests/cluster/images.py, else any image there but the pause image."""
    images = node._images_module()
    names = [image.name for image in images.build_all(lambda _line: None) if image.name != images.PAUSE]
    preferred = getattr(images, "NOTEBOOK_BASE", None)
    if preferred in names:
        return str(preferred)
    if not names:
        pytest.fail("tests/cluster/images.py builds no image besides pause")
    return str(names[0])


def _wait(what: str, done: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def real_pod(real_node: RealNode) -> Iterator[client.V1Pod]:
    """A restricted notebook-like pod holding one of real-0's GPUs, Ready in a real container."""
    name = f"real-{uuid.uuid4().hex[:6]}"
    manifest = {
        "metadata": {"name": name, "labels": {"dcloud.test/harness-test": "true"}},
        "spec": {
            "nodeSelector": {node.NODE_LABEL: "real"},
            "tolerations": TOLERATIONS,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "notebook",
                    "image": _shell_image(),
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f"echo '{GREETING}'; exec sleep 3600"],
                    "securityContext": RESTRICTED,
                    "resources": {"limits": {"cpu": "200m", "memory": "64Mi", node.GPU_RESOURCE: "1"}},
                }
            ],
        },
    }
    core, namespace = real_node.admin, real_node.namespace
    core.create_namespaced_pod(namespace, manifest)

    def ready() -> bool:
        status = core.read_namespaced_pod(name, namespace).status
        return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])

    try:
        _wait(f"pod {name} Ready", ready)
        yield core.read_namespaced_pod(name, namespace)
    finally:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)
        except ApiException as error:
            if error.status != 404:
                raise


def test_node_is_ready_with_kubelet_and_simulated_gpus(real_node: RealNode) -> None:
    got = real_node.admin.read_node(node.NAME)
    assert fleet._ready(got)
    assert got.status.node_info.kubelet_version == K8S_VERSION
    assert got.status.node_info.container_runtime_version == "containerd://2.4.2"
    assert got.status.allocatable[node.GPU_RESOURCE] == node.GPUS
    assert got.metadata.annotations[node.GPU_ANNOTATION].startswith("simulated")
    labels = got.metadata.labels
    assert labels[fleet.PRODUCT_LABEL] == "Tesla-T4" and labels[fleet.POOL_LABEL] == "real"
    assert labels[node.NODE_LABEL] == "real" and "type" not in labels  # not KWOK's
    taints = {(t.key, t.value, t.effect) for t in got.spec.taints}
    assert {(t["key"], t["value"], t["effect"]) for t in node.TAINTS} <= taints
    addresses = {a.type: a.address for a in got.status.addresses}
    assert addresses["InternalIP"] == real_node.state.address != "127.0.0.1"


def test_restricted_pod_runs_in_a_real_container(real_node: RealNode, real_pod: client.V1Pod) -> None:
    assert real_pod.spec.node_name == node.NAME
    status = real_pod.status.container_statuses[0]
    assert status.container_id.startswith("containerd://")
    admin = harness.RunDir(real_node.run.root).admin_kubeconfig
    logs = _kubectl(admin, "-n", real_node.namespace, "logs", real_pod.metadata.name)
    assert logs.returncode == 0 and GREETING in logs.stdout, logs.stderr
    ident = _kubectl(admin, "-n", real_node.namespace, "exec", real_pod.metadata.name, "--", "id", "-u")
    assert ident.returncode == 0 and ident.stdout.strip() == "1000", ident.stderr
    cgroup = _kubectl(admin, "-n", real_node.namespace, "exec", real_pod.metadata.name, "--", "cat", "/proc/1/cgroup")
    assert f"{node.Names.of(real_node.run).cgroup_root}/kubepods" in cgroup.stdout, cgroup.stdout + cgroup.stderr
    assert real_pod.status.pod_ip.startswith(real_node.state.subnet.rsplit(".", 1)[0] + ".")


def test_kubelet_serves_only_authenticated_callers(real_node: RealNode) -> None:
    url = f"https://{real_node.state.address}:{real_node.state.port}/pods"
    pki = Pki(real_node.run.pki)
    anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))  # also checks its serving cert
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=anonymous, timeout=10)
    assert refused.value.code == 401
    # The API server's own client certificate, authorized through the kubelet's webhook.
    apiserver = ssl.create_default_context(cafile=str(pki.ca_cert))
    apiserver.load_cert_chain(str(pki.kubelet_client_cert), str(pki.kubelet_client_key))
    with urllib.request.urlopen(url, context=apiserver, timeout=10) as reply:
        assert reply.status == 200


def test_kubelet_acts_as_its_node_only(real_node: RealNode) -> None:
    kubeconfig = node.NodeDir(real_node.run.node).kubeconfig
    secret = f"unreferenced-{uuid.uuid4().hex[:6]}"
    real_node.admin.create_namespaced_secret(real_node.namespace, {"metadata": {"name": secret}})
    try:
        with kube_config.new_client_from_config(config_file=str(kubeconfig)) as api:
            review = client.AuthenticationV1Api(api).create_self_subject_review({})
            assert review.status.user_info.username == f"system:node:{node.NAME}"
            assert "system:nodes" in review.status.user_info.groups
            assert "system:masters" not in review.status.user_info.groups
            core = client.CoreV1Api(api)
            with pytest.raises(ApiException) as no_secret:  # Node authorizer: not used by its pods
                core.read_namespaced_secret(secret, real_node.namespace)
            assert no_secret.value.status == 403
            with pytest.raises(ApiException) as no_other_node:  # NodeRestriction: only itself
                core.patch_node("t4-0", {"metadata": {"labels": {"dcloud.test/tampered": "yes"}}})
            assert no_other_node.value.status == 403
    finally:
        real_node.admin.delete_namespaced_secret(secret, real_node.namespace)


def _shim_pids(run: RunDir) -> list[int]:
    return node._our_shims(node.NodeDir(run.node))


def test_deleting_the_pod_removes_container_shim_netns_and_cgroup(real_node: RealNode) -> None:
    core, namespace, run = real_node.admin, real_node.namespace, real_node.run
    names = node.Names.of(run)
    netns_dir = node.NodeDir(run.node).root / "containerd" / "state" / "io.containerd.grpc.v1.cri" / "netns"
    before_netns = set(netns_dir.glob("*"))
    name = f"gone-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"nodeSelector": {node.NODE_LABEL: "real"}, "tolerations": TOLERATIONS,
                 "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": _shell_image(), "imagePullPolicy": "Never",
                                 "command": ["sleep", "3600"], "securityContext": RESTRICTED}]},
    })  # fmt: skip
    try:
        _wait(f"{name} Running", lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running")
        pod = core.read_namespaced_pod(name, namespace)
        container = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
        cgroup_root = Path("/sys/fs/cgroup/memory", names.cgroup_root.lstrip("/"))
        pod_cgroups = list(cgroup_root.rglob(f"pod{pod.metadata.uid}"))
        assert pod_cgroups, "no memory cgroup for the pod under the kubelet's cgroup root"
        netns = set(netns_dir.glob("*")) - before_netns
        assert netns, f"no network namespace for the pod in {netns_dir}"
        shims = set(_shim_pids(run))
        assert shims
    finally:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            return error.status == 404
        return False

    _wait(f"{name} deleted", gone)
    ctr = node.NodeDir(run.node)
    _wait("its container removed", lambda: container not in node._ctr(ctr, "containers", "list", "--quiet"))
    _wait("its cgroups removed", lambda: not any(p.exists() for p in pod_cgroups))
    _wait("its network namespace removed", lambda: not any(p.exists() for p in netns))
    _wait("its shim gone", lambda: len(set(_shim_pids(run)) & shims) < len(shims))
    assert container not in node._ctr(ctr, "tasks", "list", "--quiet")


# --- a second cluster: no collision, nothing left behind -------------------------------------


def _host_snapshot() -> dict[str, object]:
    def save(tool: str) -> list[str]:
        out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        return [line for line in out.splitlines() if not line.startswith("#")]

    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    hierarchies = [h for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]
    return {
        "iptables": save("iptables-save"),
        "ip6tables": save("ip6tables-save"),
        "sysctls": host.read_sysctls(),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "mounts": sorted(Path("/proc/mounts").read_text().splitlines()),
        "cgroups": sorted(str(d) for h in hierarchies for d in h.iterdir() if d.is_dir()),
        "dirs": [d for d in host.HOST_DIRS if Path(d).exists()],
        "loop devices": sorted(str(p.parents[1].name) for p in Path("/sys/block").glob("loop*/loop/backing_file")),
    }


def _volume_in_use(api: client.ApiClient, run: RunDir, namespace: str) -> Path:
    """A claim of the default class and a pod on real-0 that mounts it; returns its path."""
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "left"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    })  # fmt: skip
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "left"},
        "spec": {"nodeSelector": {node.NODE_LABEL: "real"}, "tolerations": TOLERATIONS,
                 "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": node._images_module().PAUSE, "imagePullPolicy": "Never",
                                 "securityContext": RESTRICTED, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "left"}}]},
    })  # fmt: skip
    _wait("pod left Running", lambda: core.read_namespaced_pod("left", namespace).status.phase == "Running", 90)
    claim = core.read_namespaced_persistent_volume_claim("left", namespace)
    path = Path(core.read_persistent_volume(claim.spec.volume_name).spec.local.path)
    assert path.parent == run.volumes.resolve() and volumes.mount_source(volumes.mount_point_of(path)), path
    return path


def test_second_cluster_does_not_collide_and_leaves_the_host_as_before(real_node: RealNode) -> None:
    before = _host_snapshot()
    other = RunDir(Path(tempfile.mkdtemp(prefix="dcloud-2nd-")))
    # Its image store inside its run dir (removed below), holding the pause image (and the volume
    # helper's) only.
    env = {
        **os.environ,
        "DCLOUD_CLUSTER_DIR": str(other.root),
        node.STORE_ENV: str(other.root / "images"),
        node.IMAGES_ENV: node._images_module().PAUSE,
    }
    cli = [sys.executable, "-m", "tests.cluster"]
    try:
        started = subprocess.run([*cli, "up", "--no-build"], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, timeout=300, check=False)  # fmt: skip
        assert started.returncode == 0, started.stderr[-3000:]
        second = node.running(other)
        assert second is not None, node.unavailable_note(other)
        ours, theirs = node.Names.of(real_node.run), node.Names.of(other)
        assert ours.bridge != theirs.bridge and ours.cgroup_root != theirs.cgroup_root
        assert second.port != real_node.state.port and second.subnet != real_node.state.subnet
        with kube_config.new_client_from_config(config_file=str(other.admin_kubeconfig)) as api:
            assert fleet._ready(client.CoreV1Api(api).read_node(node.NAME))
            # a volume mounted in a running pod, for `down` to take away (mount and loop device)
            _volume_in_use(api, other, fleet.NAMESPACE)
        assert fleet._ready(real_node.admin.read_node(node.NAME))  # ours still fine
    finally:
        stopped = subprocess.run([*cli, "down"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                 timeout=300, check=False)  # fmt: skip
        leftover = {p.name for p in other.root.iterdir()}
        if leftover <= {"lock", "images"}:  # what down keeps: its lock and the image store
            shutil.rmtree(other.root)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert leftover <= {"lock", "images"}, leftover
    after = _host_snapshot()
    for key in before:
        assert after[key] == before[key], key
