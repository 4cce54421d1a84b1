"""Starting, checking and stopping the control-plane processes of one run directory.

The processes run detached (own session, output to ``logs/<name>.log``) so they outlive the
command that started them; ``state.json`` records their pids and executables so that a later
``down`` stops exactly them and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .layout import RunDir
from .pki import FRONT_PROXY_CLIENT_USER, Pki

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Virtual ranges only: nothing routes to them. Pod IPs are loopback addresses handed out by KWOK.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "127.1.0.0/16"
NODE_SELECTOR = "type=kwok"
NODE_LEASE_SECONDS = 40
# A Job's pod with this label keeps running on a KWOK node instead of succeeding at once.
KEEP_RUNNING_LABEL = "dcloud.test/keep-running"
ALLOW_PRIVILEGED = "--allow-privileged=true"
# Recorded and stopped with the others, but not part of the control plane: a dead add-on is
# restarted on its own by `up`, not a reason to restart the cluster (kueue.py, storage.py).
ADDONS = ("kueue", "local-path-provisioner", "volume-resizer")
# Clients first, etcd last: an API server whose etcd is gone hangs in its shutdown.
STOP_ORDER = ((*ADDONS, "kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",))
COMPONENTS = tuple(name for group in STOP_ORDER for name in group if name not in ADDONS)


@dataclass
class State:
    """What ``state.json`` holds."""

    api_port: int
    processes: dict[str, dict[str, int | str]] = field(default_factory=dict)
    hub_token_expires: float = 0.0
    kueue_ports: dict[str, int] = field(default_factory=dict)  # kueue.py: webhook, visibility, ...

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def save(self, run: RunDir) -> None:
        run.state.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, run: RunDir) -> State | None:
        try:
            return cls(**json.loads(run.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int, exe: str) -> bool:
    """True while ``pid`` runs ``exe``; a zombie or a recycled pid counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        running = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and running == exe


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (fixture started it)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(run: RunDir, name: str, argv: list[str], env: dict[str, str] | None = None) -> dict[str, int | str]:
    run.logs.mkdir(parents=True, exist_ok=True)
    with run.log(name).open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return {"pid": process.pid, "exe": os.path.realpath(argv[0])}


def etcd_argv(bins: Path, run: RunDir, client: int, peer: int) -> list[str]:
    return [
        str(bins / "etcd"),
        "--name=dcloud",
        f"--data-dir={run.etcd_data}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=dcloud=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_argv(bins: Path, pki: Pki, etcd_port: int, api_port: int) -> list[str]:
    # Admission plugins are the defaults (PodSecurity, ResourceQuota, LimitRanger, ServiceAccount,
    # ... exactly what a real cluster enforces) plus NodeRestriction, which every real cluster
    # enables so that a kubelet may only change its own Node and the pods bound to it.
    return [
        str(bins / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        # The default reconciler refuses a loopback advertise address.
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # As on any real cluster (kubeadm's default): privileged containers exist, and Pod Security
        # admission decides where (namespace dcloud is restricted). The volume provisioner's
        # helper pods need it (storage.py).
        ALLOW_PRIVILEGED,
        # Towards a real kubelet (logs, exec, port-forward): dial its InternalIP (node names do
        # not resolve here), check its serving certificate against the cluster CA and present
        # our own client certificate, which RBAC lets use the kubelet API and nothing more.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--kubelet-certificate-authority={pki.ca_cert}",
        f"--kubelet-client-certificate={pki.kubelet_client_cert}",
        f"--kubelet-client-key={pki.kubelet_client_key}",
        # The aggregation layer (Kueue's visibility API): the API server proxies to an aggregated
        # API server as `front-proxy-client`, passing the user in X-Remote-* headers that the
        # aggregated server trusts from that certificate only. No kube-proxy here, so Service
        # IPs route nowhere: dial the Service's endpoints instead.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_USER}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
        "--enable-aggregator-routing=true",
        "--profiling=false",
    ]


def controller_manager_argv(bins: Path, pki: Pki, kubeconfig: Path) -> list[str]:
    # It removes the not-ready taint of new nodes, creates each namespace's `default`
    # ServiceAccount, binds PVCs, fills ResourceQuota status and garbage-collects.
    return [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--controllers=*",
        "--use-service-account-credentials=false",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        # No metrics/healthz endpoint: nothing reads it and it would need a port.
        "--secure-port=0",
        "--profiling=false",
    ]


def scheduler_argv(bins: Path, kubeconfig: Path) -> list[str]:
    return [
        str(bins / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--secure-port=0",
        "--profiling=false",
    ]


def kwok_argv(bins: Path, run: RunDir, kubeconfig: Path) -> list[str]:
    return [
        str(bins / "kwok"),
        f"--kubeconfig={kubeconfig}",
        f"--config={run.kwok_stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-label-selector={NODE_SELECTOR}",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
        # The `fast` stages heartbeat through node leases.
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
    ]


def kustomize_resources(directory: Path) -> list[Path]:
    """The files a resources-only kustomization lists, depth first (KWOK reads plain YAML)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files: list[Path] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        files += kustomize_resources(path) if path.is_dir() else [path]
    return files


def _keep_running(document: str) -> str:
    """KWOK's `pod-complete` stage ends a Job's pod as soon as it runs; leave out pods labelled
    KEEP_RUNNING_LABEL, so a test can hold a running Job (e.g. one counting against a Kueue
    quota) until it deletes it."""
    stage = yaml.safe_load(document)
    if stage.get("kind") != "Stage" or stage["metadata"]["name"] != "pod-complete":
        return document
    expressions = stage["spec"]["selector"]["matchExpressions"]
    expressions.append({"key": f'.metadata.labels["{KEEP_RUNNING_LABEL}"]', "operator": "DoesNotExist"})
    return yaml.safe_dump(stage, sort_keys=False).strip()


def write_kwok_stages(run: RunDir, stages: Path) -> None:
    """The `fast` stages: nodes Ready at once with lease heartbeats, pods Running at once, Job
    pods Succeeded at once unless labelled KEEP_RUNNING_LABEL."""
    documents = [_keep_running(path.read_text().strip()) for path in kustomize_resources(stages / "fast")]
    run.kwok_stages.write_text("\n---\n".join(documents) + "\n")


def readyz(server: str, pki: Pki, timeout: float = 2.0) -> bool:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    try:
        with urllib.request.urlopen(f"{server}/readyz", context=context, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _log_tail(run: RunDir, name: str, lines: int = 20) -> str:
    try:
        return "\n".join(run.log(name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def allows_privileged(state: State) -> bool:
    """Whether the running API server was started with ALLOW_PRIVILEGED."""
    pid = state.processes.get("kube-apiserver", {}).get("pid")
    try:
        return ALLOW_PRIVILEGED.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def dead(state: State, names: Iterable[str] | None = None) -> list[str]:
    """Recorded components that are not running."""
    wanted = list(names) if names is not None else list(state.processes)
    return [
        name
        for name in wanted
        if name not in state.processes
        or not alive(int(state.processes[name]["pid"]), str(state.processes[name]["exe"]))
    ]


def wait_ready(run: RunDir, state: State, pki: Pki, timeout: float = 120.0) -> None:
    """Wait for /readyz, failing early with the log tail of a component that died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = dead(state, [name for name in state.processes if name not in ADDONS])
        if gone:
            _reap_all(state)
            tails = "\n\n".join(f"--- {name}:\n{_log_tail(run, name)}" for name in gone)
            raise RuntimeError(f"{', '.join(gone)} exited while starting\n{tails}")
        if readyz(state.server, pki):
            return
        time.sleep(0.25)
    raise TimeoutError(f"kube-apiserver not ready after {timeout:.0f}s\n{_log_tail(run, 'kube-apiserver')}")


def start_storage_and_api(bins: Path, run: RunDir, pki: Pki) -> State:
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    state = State(api_port=api_port)
    run.etcd_data.mkdir(parents=True, exist_ok=True)
    run.etcd_data.chmod(0o700)
    state.processes["etcd"] = spawn(run, "etcd", etcd_argv(bins, run, etcd_port, peer_port))
    # kube-apiserver retries etcd until it answers, so both start at once.
    state.processes["kube-apiserver"] = spawn(run, "kube-apiserver", apiserver_argv(bins, pki, etcd_port, api_port))
    state.save(run)
    return state


def start_controllers(bins: Path, run: RunDir, pki: Pki, state: State) -> None:
    """Start what talks to a ready API server (kube-controller-manager gives up on one that
    does not answer within seconds)."""
    admin = run.admin_kubeconfig
    argvs = {
        "kube-controller-manager": controller_manager_argv(bins, pki, admin),
        "kube-scheduler": scheduler_argv(bins, admin),
        "kwok": kwok_argv(bins, run, admin),
    }
    for name, argv in argvs.items():
        state.processes[name] = spawn(run, name, argv)
    state.save(run)


def _reap_all(state: State) -> None:
    for info in state.processes.values():
        _reap(int(info["pid"]))


def _wait_gone(state: State, names: set[str], timeout: float) -> set[str]:
    """Wait until none of ``names`` runs; return those still running at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        _reap_all(state)
        left = names - set(dead(state, names))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop(run: RunDir, grace: float = 10.0) -> list[str]:
    """Stop every recorded process still running: clients first, then kube-apiserver, then
    etcd (an API server whose etcd is gone hangs in shutdown). Each group gets SIGTERM, and
    SIGKILL when it outlives ``grace``. Returns the names of the components that were running.
    """
    state = State.load(run)
    if state is None:
        return []
    stopped: list[str] = []
    later = {name for group in STOP_ORDER[1:] for name in group}
    # processes an older harness recorded (e.g. its process agent) go with the first group
    groups = [tuple(set(state.processes) - later | set(STOP_ORDER[0])), *STOP_ORDER[1:]]
    for group in groups:
        running = {name for name in group if name in state.processes} - set(dead(state, group))
        for name in running:
            _signal(int(state.processes[name]["pid"]), signal.SIGTERM)
        for name in _wait_gone(state, running, grace):
            _signal(int(state.processes[name]["pid"]), signal.SIGKILL)
        if left := _wait_gone(state, running, 5.0):
            raise RuntimeError(f"still running after SIGKILL: {sorted(left)}")
        stopped += sorted(running)
    return stopped


@contextmanager
def api_server_stopped(run: RunDir) -> Iterator[None]:
    """Kill kube-apiserver as a crash would, and start it again with the same flags and port
    when the block ends (etcd keeps the state; clients must reconnect by themselves)."""
    state = State.load(run)
    if state is None or "kube-apiserver" not in state.processes:
        raise RuntimeError(f"no API server recorded in {run.state}")
    pid = int(state.processes["kube-apiserver"]["pid"])
    argv = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
    _signal(pid, signal.SIGKILL)
    if _wait_gone(state, {"kube-apiserver"}, 10.0):
        raise RuntimeError("kube-apiserver outlived SIGKILL")
    try:
        yield
    finally:
        state.processes["kube-apiserver"] = spawn(run, "kube-apiserver", argv)
        state.save(run)
        wait_ready(run, state, Pki(run.pki))
