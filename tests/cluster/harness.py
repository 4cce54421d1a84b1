"""``up`` and ``down``: the whole life of one local cluster, shared by the CLI and the fixture."""

from __future__ import annotations

import fcntl
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client
from kubernetes import config as kube_config

from . import binaries, control_plane, fleet, kubeconfig, kueue, node, storage
from .control_plane import COMPONENTS, State
from .layout import RunDir, default_run_dir, stages_dir
from .pki import Pki, generate

REPO_ROOT = Path(__file__).resolve().parents[2]
# Written by whoever ships the chart's extra RBAC (a ClusterRole to read Nodes, ...).
RBAC_FILE = REPO_ROOT / "helm-values" / "rbac.yaml"
# The hub's access to Kueue's queues, workloads and visibility API (applied the same way).
KUEUE_RBAC_FILE = REPO_ROOT / "helm-values" / "rbac-kueue.yaml"
KUEUE_RBAC_SOURCE = "helm-values-rbac-kueue"
HUB_TOKEN_SECONDS = 7 * 24 * 3600
HUB_TOKEN_RENEW_BELOW = 24 * 3600

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cluster:
    """A running local cluster."""

    run: RunDir
    server: str
    started: bool  # whether the `up` that returned this started the processes
    namespace: str = fleet.NAMESPACE

    @property
    def admin_kubeconfig(self) -> Path:
        return self.run.admin_kubeconfig

    @property
    def hub_kubeconfig(self) -> Path:
        return self.run.hub_kubeconfig


@contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """One `up` or `down` at a time per run directory (the fixture and a developer may race)."""
    run.root.mkdir(parents=True, exist_ok=True)
    with (run.root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def healthy(run: RunDir) -> State | None:
    """The state of a cluster whose processes all run and whose API server is ready."""
    state = State.load(run)
    if state is None or control_plane.dead(state, COMPONENTS):
        return None
    pki = Pki(run.pki)
    if not pki.kubelet_client_cert.is_file():
        return None  # started by an older harness: no way to reach a real kubelet; restart it
    if not pki.front_proxy_client_cert.is_file():
        return None  # started by an older harness: no aggregation layer for Kueue; restart it
    if not control_plane.allows_privileged(state):
        return None  # started by an older harness: no privileged pods for the volume helper; restart it
    try:
        if control_plane.KEEP_RUNNING_LABEL not in run.kwok_stages.read_text():
            return None  # an older harness's KWOK stages end every Job at once; restart it
    except OSError:
        return None
    return state if control_plane.readyz(state.server, pki) else None


def _clean(run: RunDir) -> None:
    for path in run.generated():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _admin_api(run: RunDir) -> client.ApiClient:
    return kube_config.new_client_from_config(config_file=str(run.admin_kubeconfig))


def _stop_node(run: RunDir, log: Log) -> list[str]:
    """Stop real-0 (through the API while the control plane still answers, so the kubelet tears
    its pods down itself) and undo its host changes; then unmount its volumes."""
    if healthy(run) is None:
        stopped = node.stop(run, log, api=None)
    else:
        with _admin_api(run) as api:
            stopped = node.stop(run, log, api=api)
    return stopped + storage.release(run, log)


def _start(run: RunDir, build: bool, log: Log) -> State:
    bins = binaries.ensure(build)
    _stop_node(run, log)
    control_plane.stop(run)  # whatever is left of a cluster that died
    _clean(run)
    pki = generate(run.pki)
    control_plane.write_kwok_stages(run, stages_dir())
    state = control_plane.start_storage_and_api(bins, run, pki)
    try:
        kubeconfig.write(
            run.admin_kubeconfig,
            server=state.server,
            ca_cert=pki.ca_cert,
            user="dcloud-admin",
            client_cert=pki.admin_cert,
            client_key=pki.admin_key,
        )
        control_plane.wait_ready(run, state, pki)
        log("kube-apiserver ready; starting controller-manager, scheduler, kwok")
        control_plane.start_controllers(bins, run, pki, state)
    except BaseException:
        control_plane.stop(run)
        raise
    return state


def _set_up_objects(run: RunDir, state: State, log: Log) -> None:
    with _admin_api(run) as api:
        fleet.apply(api, fleet.NAMESPACE, RBAC_FILE, dataset_root=run.datasets)
        rbac = client.RbacAuthorizationV1Api(api)
        fleet.apply_extra_rbac(rbac, KUEUE_RBAC_FILE, fleet.NAMESPACE, source=KUEUE_RBAC_SOURCE)
        node.ensure(run, state.server, api, log)
        storage.ensure(run, state, api, log)
        kueue.ensure(run, state, api, log)
        expires_in = state.hub_token_expires - time.time()
        if run.hub_kubeconfig.is_file() and expires_in > HUB_TOKEN_RENEW_BELOW:
            return
        log("issuing a token for ServiceAccount hub")
        token, state.hub_token_expires = fleet.issue_hub_token(
            client.CoreV1Api(api), fleet.NAMESPACE, HUB_TOKEN_SECONDS
        )
    kubeconfig.write(
        run.hub_kubeconfig,
        server=state.server,
        ca_cert=Pki(run.pki).ca_cert,
        user=f"system:serviceaccount:{fleet.NAMESPACE}:{fleet.HUB}",
        token=token,
        namespace=fleet.NAMESPACE,
    )
    state.save(run)


def up(run: RunDir | None = None, *, build: bool = True, log: Log = _stderr) -> Cluster:
    """Start a cluster in ``run`` (default: ``$DCLOUD_CLUSTER_DIR`` or ~/.cache/dcloud-k8s/run),
    or reuse the healthy one already there, and converge its objects.

    ``build``: run build.sh when binaries are missing (else raise ``FileNotFoundError``).
    """
    run = run or RunDir(default_run_dir())
    began = time.monotonic()
    with _locked(run):
        state = healthy(run)
        started = state is None
        if state is None:
            log(f"starting a cluster in {run.root}")
            state = _start(run, build, log)
        else:
            log(f"reusing the cluster in {run.root} ({state.server})")
        try:
            _set_up_objects(run, state, log)
        except BaseException:
            if started:
                log(f"setup failed; logs are in {run.logs}")
                _stop_node(run, log)
                control_plane.stop(run)
            raise
    log(f"cluster up in {time.monotonic() - began:.1f}s")
    return Cluster(run=run, server=state.server, started=started)


def down(run: RunDir | None = None, *, log: Log = _stderr) -> list[str]:
    """Stop every process ``up`` started in ``run`` and remove its files; return their names."""
    run = run or RunDir(default_run_dir())
    with _locked(run):
        stopped = _stop_node(run, log)
        stopped += control_plane.stop(run)
        _clean(run)
    log(f"stopped {', '.join(stopped) or 'nothing'}")
    return stopped
