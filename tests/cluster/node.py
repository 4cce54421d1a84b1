"""Node ``real-0``: a real kubelet with containerd, runc and CNI, beside the KWOK fleet.

KWOK nodes only pretend to run pods. ``real-0`` runs them in real containers, so the tests can
check what only a real node shows: the pod's process, its cgroup limits, ``kubectl logs`` and
``exec`` through an authenticated kubelet, and a kubelet confined by the Node authorizer and
NodeRestriction to its own objects.

It needs root (containerd, runc, cgroups, a bridge). Everything lives under ``<run>/node``;
what cannot (cgroups, the bridge, sysctls, iptables chains, a few fixed host directories) is
named after the run directory, so two clusters on one machine do not collide, and is recorded
by :mod:`.host` before the start and put back by :func:`stop`.

The GPUs are simulated: the node advertises ``nvidia.com/gpu: 2`` the way a device plugin would,
by patching the Node status, but there is no device behind it (said in an annotation too).
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import binaries, control_plane, fleet, host, kubeconfig
from .layout import RunDir, bin_dir, cache_dir
from .pki import KUBELET_CLIENT_USER, Pki, issue

NAME = "real-0"
NODE_LABEL = "dcloud.test/node"
POOL = "real"
GPU_RESOURCE = "nvidia.com/gpu"
GPUS = "2"
GPU_ANNOTATION = "dcloud.test/gpus"
GPU_NOTE = "simulated: no device behind nvidia.com/gpu"
# The T4 nodes' labels and taint, plus this one: catalog GPU classes do not tolerate it, so
# availability counts and ordinary T4 pods never see real-0; tests opt in with a toleration.
REAL_TAINT = {"key": NODE_LABEL, "value": "real", "effect": "NoSchedule"}
T4_LABELS = next(n.labels for n in fleet.FLEET if n.pool == "t4")
LABELS = {**T4_LABELS, fleet.POOL_LABEL: POOL, NODE_LABEL: "real"}
TAINTS = [fleet.GPU_TAINT, REAL_TAINT]
CNI_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
CGROUP_FS = Path("/sys/fs/cgroup")
CRI_NAMESPACE = "k8s.io"
KUBELET_API_BINDING = "dcloud-test:apiserver-kubelet-client"
# Private ranges the pod subnet is picked from: 10.128.0.0/10 in /24 steps.
SUBNET_BASE = ipaddress.ip_network("10.128.0.0/10")
DISABLE_ENV = "DCLOUD_REAL_NODE"  # "0": never start real-0
NODE_IP_ENV = "DCLOUD_NODE_IP"  # override the discovered node address
STORE_ENV = "DCLOUD_NODE_IMAGE_STORE"  # where containerd keeps images (default: in the cache)
IMAGES_ENV = "DCLOUD_NODE_IMAGES"  # comma-separated names to import (the pause image always)

Log = Callable[[str], None]


class NodeUnavailable(RuntimeError):
    """This machine or build cannot run the real node; the reason says why."""


@dataclass(frozen=True)
class NodeDir:
    """The files of node real-0 in one run directory."""

    root: Path

    @property
    def state(self) -> Path:
        """JSON: pids, executables, address, port, bridge, subnet; or why there is no node."""
        return self.root / "state.json"

    @property
    def host_record(self) -> Path:
        return self.root / "host.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubeconfig(self) -> Path:
        """The kubelet's own credentials: user system:node:real-0, group system:nodes."""
        return self.root / "kubelet.kubeconfig"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"


def image_store(run: RunDir) -> Path:
    """containerd's root (content, snapshots, metadata), kept across ``down``/``up`` like a build
    cache so that images are imported once, not on every start: ``$DCLOUD_NODE_IMAGE_STORE`` or
    one per run directory in the cluster cache. It holds no mounts once containerd stops."""
    if override := os.environ.get(STORE_ENV):
        return Path(override)
    return cache_dir() / "node-images" / Names.of(run).bridge.removeprefix("dcbr")


@dataclass(frozen=True)
class Names:
    """Host-wide names of one run directory's node, the same for every start."""

    bridge: str
    cgroup_root: str  # "/dcloud-<hash>" in every cgroup hierarchy
    subnet_index: int

    @classmethod
    def of(cls, run: RunDir) -> Names:
        digest = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()
        slots = SUBNET_BASE.num_addresses // 256
        return cls(f"dcbr{digest[:8]}", f"/dcloud-{digest[:8]}", int(digest[8:16], 16) % slots)


# --- what the machine offers ----------------------------------------------------------------


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out or "[]"))


def node_ip() -> str:
    """A non-loopback IPv4 address of this machine (the kubelet refuses loopback): the one on
    the default route's interface, else any global one not on a test bridge or veth."""
    if override := os.environ.get(NODE_IP_ENV):
        return override
    default_devs = [r.get("dev") for r in _ip_json("-4", "route", "show", "default")]
    found: list[tuple[bool, str]] = []
    for iface in _ip_json("-4", "addr", "show", "scope", "global"):
        name = iface.get("ifname", "")
        if name.startswith(("dcbr", "veth")) or "UP" not in iface.get("flags", []):
            continue
        for addr in iface.get("addr_info", []):
            if addr.get("family") == "inet":
                found.append((name not in default_devs, addr["local"]))
    if not found:
        raise NodeUnavailable("no non-loopback IPv4 address on this machine for the kubelet")
    return sorted(found)[0][1]


def _images_module() -> Any:
    try:
        return importlib.import_module(f"{__package__}.images")
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.images":
            raise
        raise NodeUnavailable(
            "tests/cluster/images.py is missing: it builds the pause and test images real-0 runs"
        ) from error


def unavailable_reason() -> str | None:
    """Why real-0 cannot start here, or None."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "no"):
        return f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    if os.geteuid() != 0:
        return "needs root (containerd, runc, cgroups and a bridge)"
    if gone := binaries.node_missing():
        return f"not built in {bin_dir()}: {', '.join(gone)} (run tests/cluster/build.sh)"
    if shutil.which("runc") is None:
        return "runc is not installed"
    if missing := [p for p in CNI_PLUGINS if not (CNI_DIR / p).is_file()]:
        return f"CNI plugins missing in {CNI_DIR}: {', '.join(missing)} (containernetworking-plugins)"
    try:
        node_ip()
        _images_module()
    except NodeUnavailable as error:
        return str(error)
    return None


# --- configuration files ----------------------------------------------------------------------


def _subnet(names: Names) -> ipaddress.IPv4Network:
    """This run dir's /24, or the next one free of every route on the machine."""
    taken = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst and dst != "default" and not dst.startswith(("local", "broadcast")):
            try:
                taken.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    slots = list(SUBNET_BASE.subnets(new_prefix=24))
    for step in range(len(slots)):
        candidate = slots[(names.subnet_index + step) % len(slots)]
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise NodeUnavailable(f"no free /24 left in {SUBNET_BASE}")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def containerd_config(node: NodeDir, store: Path, pause_image: str) -> str:
    """containerd 2.x, CRI only, every path under the node dir or the image store (no
    /etc/containerd imports)."""
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{cri_runtime}.containerd.runtimes.runc"
    sections: dict[str, dict[str, object]] = {
        "": {
            "version": 3,
            "root": store / "root",
            "state": node.root / "containerd" / "state",
            "imports": [],
        },
        "grpc": {"address": node.socket},
        "ttrpc": {"address": f"{node.socket}.ttrpc"},
        "plugins.'io.containerd.cri.v1.images'": {"snapshotter": "overlayfs"},
        "plugins.'io.containerd.cri.v1.images'.pinned_images": {"sandbox": pause_image},
        cri_runtime: {
            # This VM's processes lack CAP_SYS_RESOURCE: runc may only raise oom_score_adj.
            "restrict_oom_score_adj": True,
            # Pod network namespaces under our state dir, not /var/run/netns.
            "netns_mounts_under_state_dir": True,
            "disable_hugetlb_controller": True,
            "tolerate_missing_hugetlb_controller": True,
        },
        f"{cri_runtime}.cni": {"bin_dirs": [str(CNI_DIR)], "conf_dir": node.cni_conf, "max_conf_num": 1},
        runc: {"runtime_type": "io.containerd.runc.v2"},
        # runc's state under the node dir, not /run/containerd/runc.
        f"{runc}.options": {"SystemdCgroup": False, "Root": node.root / "runc"},
        "plugins.'io.containerd.grpc.v1.cri'": {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
        "plugins.'io.containerd.internal.v1.opt'": {"path": node.root / "containerd" / "opt"},
        "plugins.'io.containerd.nri.v1.nri'": {"disable": True},
    }
    lines: list[str] = []
    for section, values in sections.items():
        if section:
            lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def cni_config(node: NodeDir, names: Names, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    """A bridge with the gateway on the host; no masquerading and no port maps: pods reach this
    machine only (no iptables rules per pod)."""
    return {
        "cniVersion": "0.4.0",
        "name": names.bridge,
        "plugins": [
            {
                "type": "bridge",
                "bridge": names.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.root / "cni" / "ipam"),
                    "ranges": [[{"subnet": str(subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def kubelet_config(node: NodeDir, names: Names, pki: Pki, address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        # No systemd on the test machines; cgroup v1 hosts are still supported when asked.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": names.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,  # readiness comes from the Node object; one port fewer to collide
        "tlsCertFile": str(node.pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(node.pki / "kubelet.key"),
        "rotateCertificates": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "x509": {"clientCAFile": str(pki.ca_cert)},  # the API server's client certificate
            "webhook": {"enabled": True},  # bearer tokens, checked by TokenReview
        },
        "authorization": {"mode": "Webhook"},  # SubjectAccessReview: nodes/proxy, nodes/log, ...
        "registerNode": True,
        "registerWithTaints": TAINTS,
        "podLogsDir": str(node.root / "pod-logs"),
        "maxPods": 16,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # The test images are imported, never pulled: do not garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
    }


# --- host resources ---------------------------------------------------------------------------


def _hierarchies() -> list[Path]:
    """cgroup v1: every mounted hierarchy (named ones too); v2: the unified root."""
    if (CGROUP_FS / "cgroup.controllers").is_file():
        return [CGROUP_FS]
    return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and p.name != "unified")


def _create_cgroup_root(names: Names) -> None:
    """The kubelet expects its cgroupRoot to exist everywhere; a new cpuset cgroup starts with
    no CPUs and no memory nodes, so it gets its parent's."""
    for hierarchy in _hierarchies():
        path = hierarchy / names.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).is_file() and not (path / knob).read_text().strip():
                (path / knob).write_text((hierarchy / knob).read_text())


def _remove_cgroup_root(names: Names) -> None:
    """Kill what is left inside (containers of a crashed node), then remove every cgroup."""
    roots = [h / names.cgroup_root.lstrip("/") for h in CGROUP_FS.iterdir() if h.is_dir()]
    roots = [r for r in roots if r.is_dir()]
    for root in roots:
        for procs in root.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                _signal(int(pid), signal.SIGKILL)
    for root in roots:
        for _ in range(50):
            for directory, _subdirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            if not root.exists():
                break
            time.sleep(0.1)
        if root.exists():
            raise RuntimeError(f"could not remove cgroup {root}")


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _unmount_all(root: Path) -> None:
    for _ in range(10):
        points = _mounts_under(root)
        if not points:
            return
        for point in sorted(points, key=lambda p: -p.count("/")):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if left := _mounts_under(root):
        raise RuntimeError(f"still mounted under {root}: {left}")


def _delete_bridge(names: Names) -> None:
    subprocess.run(["ip", "link", "delete", names.bridge], capture_output=True, check=False)


# --- processes --------------------------------------------------------------------------------


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _terminate(pid: int, exe: str, grace: float) -> None:
    """SIGTERM a process we recorded, SIGKILL it when it outlives ``grace``."""
    if not control_plane.alive(pid, exe):
        return
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while control_plane.alive(pid, exe):
        control_plane._reap(pid)
        if time.monotonic() > deadline:
            _signal(pid, signal.SIGKILL)
            deadline += 5
        time.sleep(0.1)
    control_plane._reap(pid)


def _our_shims(node: NodeDir) -> list[int]:
    """Shims our containerd started: the shim binary of this build, given our socket."""
    exe = os.path.realpath(bin_dir() / "containerd-shim-runc-v2")
    address = str(node.socket).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "exe") == exe and address in (entry / "cmdline").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _task_ids(node: NodeDir) -> list[str]:
    """Ids of the sandboxes and containers containerd still has bundles for."""
    tasks = node.root / "containerd" / "state" / "io.containerd.runtime.v2.task" / CRI_NAMESPACE
    return [bundle.name for bundle in tasks.iterdir()] if tasks.is_dir() else []


def _remove_host_leftovers(node: NodeDir, names: Names) -> None:
    """What a crashed node leaves at fixed host paths, found through its own records: the
    sockets of the shims that were killed (each bundle's bootstrap.json names its socket in
    /run/containerd/s), libcni's cached results for its sandboxes (/var/lib/cni/results) and the
    kubelet's links to its pod logs (/var/log/containers)."""
    tasks = node.root / "containerd" / "state" / "io.containerd.runtime.v2.task" / CRI_NAMESPACE
    for bootstrap in tasks.glob("*/bootstrap.json"):
        try:
            address = str(json.loads(bootstrap.read_text())["address"]).removeprefix("unix://")
        except (OSError, ValueError, KeyError):
            continue
        for path in (Path(address), Path(address + ".debug")):
            if path.parent == Path("/run/containerd/s") and path.is_socket():
                path.unlink()
    ids = _task_ids(node)
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for cached in results.iterdir():
            if cached.name.startswith(f"{names.bridge}-") or any(f"-{i}-" in cached.name for i in ids):
                cached.unlink()
    links = Path("/var/log/containers")
    if links.is_dir():
        for link in links.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(f"{node.root}/"):
                link.unlink()


def _ctr(node: NodeDir, *args: str, check: bool = True) -> str:
    argv = [str(bin_dir() / "ctr"), "--address", str(node.socket), "-n", CRI_NAMESPACE, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=300).stdout


def _ctr_answers(node: NodeDir) -> bool:
    try:
        _ctr(node, "version")
    except subprocess.CalledProcessError:
        return False
    return True


def _env() -> dict[str, str]:
    """containerd finds its shim on PATH; runc, iptables, mount and ip live in sbin."""
    path = os.pathsep.join([str(bin_dir()), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return {**os.environ, "PATH": path}


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeState:
    """What ``<node>/state.json`` holds."""

    processes: dict[str, dict[str, int | str]]
    address: str
    port: int
    subnet: str

    def save(self, node: NodeDir) -> None:
        node.state.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, node: NodeDir) -> NodeState | None:
        try:
            return cls(**json.loads(node.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def running(run: RunDir) -> NodeState | None:
    """The node's state when its kubelet and containerd both run."""
    state = NodeState.load(NodeDir(run.node))
    if state is None:
        return None
    if all(control_plane.alive(int(p["pid"]), str(p["exe"])) for p in state.processes.values()):
        return state
    return None


def _wait(what: str, done: Callable[[], bool], timeout: float, run: RunDir, state: NodeState) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for name, info in state.processes.items():
            if not control_plane.alive(int(info["pid"]), str(info["exe"])):
                raise RuntimeError(f"{name} exited while waiting for {what}\n{control_plane._log_tail(run, name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# --- images -----------------------------------------------------------------------------------


def wanted_images() -> set[str]:
    """The images to build and import: ``$DCLOUD_NODE_IMAGES``, or every notebook image (the
    hub image runs in no pod here, and rebuilds on every change to the package); and pause and
    the volume provisioner's helper (storage.py), which every node needs."""
    names = {n.strip() for n in os.environ.get(IMAGES_ENV, "").split(",") if n.strip()}
    images = _images_module()
    return (names or set(images.LOCAL_NAMES.values()) - {images.HUB}) | {images.PAUSE, images.VOLUME_HELPER}


def _fingerprint(archive: Path) -> str:
    stat = archive.stat()
    return f"{archive}:{stat.st_size}:{stat.st_mtime_ns}"


def import_images(node: NodeDir, store: Path, built: list[Any], log: Log) -> list[str]:
    """Import each image's docker-archive into containerd's CRI namespace unless that very
    archive was imported before (same name, path, size and time). Returns the names imported."""
    ledger_path = store / "imported.json"
    try:
        ledger: dict[str, str] = json.loads(ledger_path.read_text())
    except (OSError, ValueError):
        ledger = {}
    present = set(_ctr(node, "images", "list", "--quiet").split())
    imported = []
    for image in built:
        if image.name in present and ledger.get(image.name) == _fingerprint(image.archive):
            continue
        log(f"importing {image.name} into real-0's containerd")
        _ctr(node, "images", "import", "--local", str(image.archive))
        ledger[image.name] = _fingerprint(image.archive)
        ledger_path.write_text(json.dumps(ledger, indent=2))
        imported.append(image.name)
    present = set(_ctr(node, "images", "list", "--quiet").split())
    if missing := [image.name for image in built if image.name not in present]:
        raise RuntimeError(f"images not in containerd after import: {missing}")
    return imported


# --- the Node object --------------------------------------------------------------------------


def ensure_kubelet_api_access(api: client.ApiClient) -> None:
    """Let the API server's kubelet client certificate use the kubelet API (logs, exec, ...)
    through the kubelet's Webhook authorization, as kubeadm does."""
    rbac = client.RbacAuthorizationV1Api(api)
    binding = {
        "metadata": {"name": KUBELET_API_BINDING, "labels": {fleet.SOURCE_LABEL: "node-real-0"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}],
    }
    try:
        rbac.create_cluster_role_binding(binding)
    except ApiException as error:
        if error.status != 409:
            raise
        rbac.replace_cluster_role_binding(KUBELET_API_BINDING, binding)


def converge(core: client.CoreV1Api) -> None:
    """Labels, taints and the simulated GPUs, set as admin (a device plugin would report the
    GPUs through the kubelet; the status patch is the documented way to advertise them)."""
    node = core.read_node(NAME)
    ours = {t["key"] for t in TAINTS}
    serialize = core.api_client.sanitize_for_serialization
    kept = [serialize(t) for t in node.spec.taints or [] if t.key not in ours]
    core.patch_node(
        NAME,
        {
            "metadata": {"labels": LABELS, "annotations": {GPU_ANNOTATION: GPU_NOTE}},
            "spec": {"taints": kept + TAINTS},
        },
    )
    if (node.status.capacity or {}).get(GPU_RESOURCE) != GPUS:
        core.patch_node_status(NAME, {"status": {"capacity": {GPU_RESOURCE: GPUS}}})


def _node_ready(core: client.CoreV1Api) -> bool:
    try:
        node = core.read_node(NAME)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return fleet._ready(node) and (node.status.allocatable or {}).get(GPU_RESOURCE) == GPUS


# --- start and stop ---------------------------------------------------------------------------


def start(run: RunDir, server: str, api: client.ApiClient, log: Log) -> NodeState:
    """Start containerd and the kubelet of real-0, import the test images, and wait until the
    node is Ready with its GPUs. Raises ``NodeUnavailable`` when this machine cannot run it."""
    if reason := unavailable_reason():
        raise NodeUnavailable(reason)
    images = _images_module()
    began = time.monotonic()
    built = images.build_all(log, wanted_images())
    log(f"images for real-0 built in {time.monotonic() - began:.1f}s")
    stop(run, log, api=None)  # whatever a crashed run left
    node, names, pki = NodeDir(run.node), Names.of(run), Pki(run.pki)
    for directory in (node.root, node.pki, node.cni_conf, node.kubelet_root, node.root / "pod-logs"):
        directory.mkdir(parents=True, exist_ok=True)
    node.root.chmod(0o700)
    host.record(node.host_record)
    address, subnet = node_ip(), _subnet(names)
    port = _free_port(address)

    issue(pki, node.pki / "node.crt", node.pki / "node.key",
          common_name=f"system:node:{NAME}", organizations=("system:nodes",))  # fmt: skip
    issue(pki, node.pki / "kubelet.crt", node.pki / "kubelet.key", common_name=f"system:node:{NAME}",
          usage=ExtendedKeyUsageOID.SERVER_AUTH, dns_names=(NAME,), ips=(address,))  # fmt: skip
    kubeconfig.write(node.kubeconfig, server=server, ca_cert=pki.ca_cert, user=f"system:node:{NAME}",
                     client_cert=node.pki / "node.crt", client_key=node.pki / "node.key")  # fmt: skip
    store = image_store(run)
    store.mkdir(parents=True, exist_ok=True)
    node.containerd_config.write_text(containerd_config(node, store, images.PAUSE))
    (node.cni_conf / "10-bridge.conflist").write_text(json.dumps(cni_config(node, names, subnet), indent=2))
    node.kubelet_config.write_text(yaml.safe_dump(kubelet_config(node, names, pki, address, port)))
    _create_cgroup_root(names)

    bins = bin_dir()
    state = NodeState(processes={}, address=address, port=port, subnet=str(subnet))
    state.processes["containerd"] = control_plane.spawn(
        run, "containerd", [str(bins / "containerd"), "--config", str(node.containerd_config)], env=_env()
    )
    state.save(node)
    _wait("containerd", lambda: node.socket.is_socket() and _ctr_answers(node), 30, run, state)
    began = time.monotonic()
    if imported := import_images(node, store, built, log):
        log(f"imported {len(imported)} images in {time.monotonic() - began:.1f}s")

    ensure_kubelet_api_access(api)
    state.processes["kubelet"] = control_plane.spawn(
        run,
        "kubelet",
        [
            str(bins / "kubelet"),
            f"--config={node.kubelet_config}",
            f"--kubeconfig={node.kubeconfig}",
            f"--root-dir={node.kubelet_root}",
            f"--cert-dir={node.pki}",
            f"--hostname-override={NAME}",
            f"--node-ip={address}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in LABELS.items()),
            "--v=1",
        ],
        env=_env(),
    )
    state.save(node)
    core = client.CoreV1Api(api)

    def registered() -> bool:
        try:
            core.read_node(NAME)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    _wait(f"node {NAME} to register", registered, 60, run, state)
    converge(core)
    _wait(f"node {NAME} to be Ready with {GPUS} {GPU_RESOURCE}", lambda: _node_ready(core), 60, run, state)
    log(f"node {NAME} Ready at {address}:{port} (bridge {names.bridge}, {subnet})")
    return state


def ensure(run: RunDir, server: str, api: client.ApiClient, log: Log) -> str | None:
    """Reuse a running real-0 (re-importing images and converging its Node) or start it.
    Returns why there is no real node, or None. A node that should start but does not raises."""
    if reason := unavailable_reason():
        stop(run, log, api=api)
        NodeDir(run.node).root.mkdir(parents=True, exist_ok=True)
        (NodeDir(run.node).root / "unavailable").write_text(reason + "\n")
        log(f"no real node {NAME}: {reason}")
        return reason
    state = running(run)
    if state is None:
        log(f"starting node {NAME} (kubelet, containerd)")
        try:
            start(run, server, api, log)
        except BaseException:
            log(f"node {NAME} failed; logs are in {run.logs}")
            stop(run, log, api=api)
            raise
        return None
    images = _images_module()
    import_images(NodeDir(run.node), image_store(run), images.build_all(log, wanted_images()), log)
    ensure_kubelet_api_access(api)
    core = client.CoreV1Api(api)
    converge(core)
    fleet._wait(f"node {NAME} Ready", lambda: _node_ready(core), 60)
    return None


def unavailable_note(run: RunDir) -> str | None:
    """The reason the last ``up`` in ``run`` gave for starting no real node."""
    try:
        return (NodeDir(run.node).root / "unavailable").read_text().strip()
    except OSError:
        return None


def _delete_pods(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Delete real-0's pods and wait until the kubelet has torn them down (containers,
    sandboxes, CNI): it removes the Pod object only after that."""
    core = client.CoreV1Api(api)
    selector = f"spec.nodeName={NAME}"
    for pod in core.list_pod_for_all_namespaces(field_selector=selector).items:
        try:
            core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=1)
        except ApiException as error:
            if error.status != 404:
                raise
    fleet._wait(
        f"pods on {NAME} to be gone",
        lambda: not core.list_pod_for_all_namespaces(field_selector=selector).items,
        timeout,
    )


def stop(run: RunDir, log: Log, *, api: client.ApiClient | None) -> list[str]:
    """Stop real-0 and undo everything it changed on the host; safe on a crashed or absent node.

    With ``api`` (a healthy control plane) its pods are deleted first, so the kubelet itself
    stops their containers and tears down their network. Only recorded pids are signalled, and
    the shims and container processes our own containerd and cgroups hold.
    """
    node, names = NodeDir(run.node), Names.of(run)
    state = NodeState.load(node)
    stopped: list[str] = []
    ctrd = state.processes.get("containerd") if state is not None else None
    # A containerd that died leaves its containers' records in the image store: drop the store.
    crashed = ctrd is not None and not control_plane.alive(int(ctrd["pid"]), str(ctrd["exe"]))
    if state is not None and "kubelet" in state.processes:
        if api is not None and running(run) is not None:
            try:
                _delete_pods(api)
                client.CoreV1Api(api).delete_node(NAME)
            except (ApiException, TimeoutError, OSError) as error:
                log(f"could not drain {NAME} cleanly ({error}); removing its containers directly")
    if state is not None:
        for name in ("kubelet", "containerd"):
            info = state.processes.get(name)
            if info is None:
                continue
            if name == "containerd" and control_plane.alive(int(info["pid"]), str(info["exe"])):
                _remove_containers(node)
            if control_plane.alive(int(info["pid"]), str(info["exe"])):
                stopped.append(name)
            _terminate(int(info["pid"]), str(info["exe"]), grace=10.0)
    for pid in _our_shims(node):
        _signal(pid, signal.SIGKILL)
    _remove_host_leftovers(node, names)
    if node.root.exists() or any((h / names.cgroup_root.lstrip("/")).exists() for h in CGROUP_FS.iterdir()):
        _remove_cgroup_root(names)
    if node.root.exists():
        _unmount_all(node.root)
    _delete_bridge(names)
    if changed := host.restore(node.host_record):
        log(f"restored host state: {', '.join(changed)}")
    if node.root.exists():
        _unmount_all(node.root)  # checked again right before the recursive delete
        shutil.rmtree(node.root)
    store = image_store(run)
    if crashed and store.exists():
        log(f"removing the image store of a crashed containerd: {store}")
        _unmount_all(store)
        shutil.rmtree(store)
    return stopped


def _remove_containers(node: NodeDir) -> None:
    """Containers the kubelet did not get to remove (no API, a crash): kill their tasks and
    delete them, which ends their shims."""
    for cid in _ctr(node, "tasks", "list", "--quiet", check=False).split():
        _ctr(node, "tasks", "kill", "--signal", "SIGKILL", cid, check=False)
    for cid in _ctr(node, "tasks", "list", "--quiet", check=False).split():
        _ctr(node, "tasks", "delete", "--force", cid, check=False)
    for cid in _ctr(node, "containers", "list", "--quiet", check=False).split():
        _ctr(node, "containers", "delete", cid, check=False)
