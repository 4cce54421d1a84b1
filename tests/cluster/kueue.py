"""Kueue's manager (sigs.k8s.io/kueue v0.17) beside the test control plane, for real.

``up`` applies Kueue's CRDs, starts the manager as a detached host process (pid in
``state.json``, output in ``logs/kueue.log``, stopped by ``down``, restarted by ``up`` when it
died) and makes what it serves reachable from the API server, without Services or kube-proxy:

- its admission webhooks at ``https://127.0.0.1:<port>/<path>``, signed by the cluster CA. Only
  the webhooks for Kueue's own kinds, Pods and batch Jobs are registered; the Pod and Job ones
  only for namespace ``dcloud`` and only for objects labelled ``kueue.x-k8s.io/queue-name``, so
  nothing else waits on Kueue (or fails while it is down); failurePolicy stays ``Fail``;
- its visibility API (``visibility.kueue.x-k8s.io``, an aggregated API) through an APIService, a
  selector-less Service and an EndpointSlice at this machine's own non-loopback address (the API
  server routes to endpoints, ``--enable-aggregator-routing``; loopback is refused there).

Kueue reads some certificates from fixed absolute paths (``/visibility/tls.crt``,
``/etc/kueue/metrics/certs/tls.crt``) when it does not manage its own, as in its container
image. Rather than writing to the host's ``/`` and ``/etc``, the manager runs chrooted into
``<run>/kueue``, which holds its (statically linked) binary, configuration, kubeconfig and
certificates at those paths. Root chroots directly; anyone else through a user namespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from . import control_plane, fleet, kubeconfig
from .control_plane import State
from .layout import RunDir, bin_dir, kueue_manifests_dir
from .node import NodeUnavailable, node_ip
from .pki import Pki, issue

NAME = "kueue"  # in state.json and logs/kueue.log
GROUP = "kueue.x-k8s.io"
API_VERSION = "v1beta2"
# A Pod or Job with this label is queued (and, for Pods, held by ADMISSION_GATE until admitted).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
MANAGED_NAMESPACE = fleet.NAMESPACE
FRAMEWORKS = ("batch/job", "pod")
SYSTEM_NAMESPACE = "kueue-system"
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
# v0.17 serves both; v1beta2 first.
VISIBILITY_VERSIONS = ("v1beta2", "v1beta1")
VISIBILITY_SERVICE = "visibility-server"
VISIBILITY_SERVICE_DNS = f"{VISIBILITY_SERVICE}.{SYSTEM_NAMESPACE}.svc"
# The manager's user. It is in system:masters: its ClusterRole (and the visibility server's
# auth-delegator bindings) are in the module's config/components/rbac, which build.sh does not
# copy, and what it may do is Kueue's business, not what the tests check. Its own certificate
# still names it in the API server's audit and in `managedFields`.
USER = "kueue-manager"
FIELD_MANAGER = "dcloud-test-harness"
# On each CRD: a digest of what the harness applied, so a warm `up` skips re-applying them
# (server-side apply of Kueue's large schemas takes seconds).
DIGEST_ANNOTATION = "dcloud.test/applied-digest"
APPLY = "application/apply-patch+yaml"
# Upstream's config/components/crd/kustomization.yaml patches these CRDs to convert between
# v1beta1 and v1beta2 through the manager's /convert webhook.
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
WEBHOOK_CONFIGURATIONS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
# Which of upstream's webhooks are registered: Kueue's own kinds, and what FRAMEWORKS manage.
KEPT_RESOURCES = {GROUP: None, "": {"pods"}, "batch": {"jobs"}}
SCOPED_RESOURCES = {"pods", "jobs"}  # only in MANAGED_NAMESPACE, only with QUEUE_LABEL
# A dead manager fails a request at once (connection refused); a hung one after this many
# seconds (upstream: the default 10), so a spawn against a stuck Kueue still fails within 5 s.
WEBHOOK_TIMEOUT = 3
READY_TIMEOUT = 120.0
PORTS = ("webhook", "visibility", "metrics", "health")

Log = Callable[[str], None]


@dataclass(frozen=True)
class KueueDir:
    """The root the manager runs chrooted in. ``inside`` turns a path into the manager's view."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "kueue"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def webhook_certs(self) -> Path:
        return self.root / "webhook-certs"

    @property
    def visibility_certs(self) -> Path:
        """Fixed in Kueue (pkg/visibility/server.go) when it does not manage certificates."""
        return self.root / "visibility"

    @property
    def metrics_certs(self) -> Path:
        """Fixed in Kueue (cmd/kueue/main.go) when it does not manage certificates."""
        return self.root / "etc" / "kueue" / "metrics" / "certs"

    @property
    def client(self) -> Path:
        return self.root / "client"

    @property
    def unavailable(self) -> Path:
        return self.root / "unavailable"

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))


# --- what the manager is started with -------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why Kueue cannot run here, or None."""
    if not os.access(bin_dir() / NAME, os.X_OK):
        return f"Kueue's manager is not built ({bin_dir() / NAME}; run tests/cluster/build.sh)"
    for needed in ("crd", "webhook/manifests.yaml", "visibility"):
        if not (kueue_manifests_dir() / needed).exists():
            return f"Kueue's manifests are missing ({kueue_manifests_dir() / needed}; run tests/cluster/build.sh)"
    if _chroot() is None:
        return "no chroot command on this machine (coreutils)"
    if os.geteuid() != 0 and shutil.which("unshare") is None:
        return "not root and no unshare command (util-linux) for a user namespace"
    return None


def _chroot() -> str | None:
    return shutil.which("chroot", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _ports(state: State, address: str) -> dict[str, int]:
    """The ports of the last start when they are still free (the registered webhooks and
    endpoints keep working), else new ones."""
    hosts = {"visibility": address}
    kept = state.kueue_ports
    if set(kept) == set(PORTS) and all(_port_free(hosts.get(n, "127.0.0.1"), p) for n, p in kept.items()):
        return dict(kept)
    return {name: _free_port(hosts.get(name, "127.0.0.1")) for name in PORTS}


def configuration(kdir: KueueDir, ports: dict[str, int], address: str) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": SYSTEM_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": ports["webhook"], "certDir": kdir.inside(kdir.webhook_certs)},
        "visibilityServer": {"bindAddress": address, "bindPort": ports["visibility"]},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MANAGED_NAMESPACE}},
        "integrations": {"frameworks": list(FRAMEWORKS)},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def _prepare(run: RunDir, state: State, kdir: KueueDir, ports: dict[str, int], address: str) -> None:
    """Write the chroot: binary, configuration, kubeconfig and certificates."""
    pki = Pki(run.pki)
    for folder in (kdir.webhook_certs, kdir.visibility_certs, kdir.metrics_certs, kdir.client, kdir.root / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    kdir.binary.unlink(missing_ok=True)
    try:
        os.link(bin_dir() / NAME, kdir.binary)  # same file system: no 85 MB copy
    except OSError:
        shutil.copy2(bin_dir() / NAME, kdir.binary)
    serving = ExtendedKeyUsageOID.SERVER_AUTH
    certs = {
        kdir.webhook_certs: {"dns_names": ("localhost",), "ips": ("127.0.0.1",)},
        kdir.visibility_certs: {"dns_names": (VISIBILITY_SERVICE_DNS,), "ips": (address,)},
        kdir.metrics_certs: {"dns_names": ("localhost",), "ips": ("127.0.0.1",)},
    }
    for folder, names in certs.items():
        issue(pki, folder / "tls.crt", folder / "tls.key", common_name=NAME, usage=serving, **names)
    issue(pki, kdir.client / "tls.crt", kdir.client / "tls.key", common_name=USER, organizations=("system:masters",))
    kubeconfig.write(
        kdir.kubeconfig,
        server=state.server,
        ca_cert=pki.ca_cert,
        user=USER,
        client_cert=kdir.client / "tls.crt",
        client_key=kdir.client / "tls.key",
    )
    kdir.config.write_text(yaml.safe_dump(configuration(kdir, ports, address), sort_keys=False))


def argv(kdir: KueueDir) -> list[str]:
    inner = ["/kueue", f"--config={kdir.inside(kdir.config)}", f"--kubeconfig={kdir.inside(kdir.kubeconfig)}"]
    chroot = _chroot() or "chroot"
    if os.geteuid() == 0:
        return [chroot, str(kdir.root), *inner]
    return ["unshare", "--user", "--map-root-user", chroot, str(kdir.root), *inner]


def _start_process(run: RunDir, state: State, kdir: KueueDir, address: str) -> None:
    """Start the manager on ``state.kueue_ports``."""
    ports = state.kueue_ports
    _prepare(run, state, kdir, ports, address)
    state.processes[NAME] = {**_spawn(run, kdir), "address": address}
    state.save(run)


def _spawn(run: RunDir, kdir: KueueDir) -> dict[str, int | str]:
    """Start the manager; return its pid and executable once chroot (and unshare) have exec'd
    it under the same pid, so that ``control_plane.alive`` recognises it."""
    # An empty environment: nothing of the caller's (KUBECONFIG, in-cluster variables) leaks in.
    info = control_plane.spawn(run, NAME, argv(kdir), env={})
    exe = os.path.realpath(kdir.binary)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{info['pid']}/exe") == exe:
                break
        except OSError:
            break  # exited at once: wait_ready reports it with the log
        time.sleep(0.01)
    return {**info, "exe": exe}


def running(state: State) -> bool:
    return NAME in state.processes and not control_plane.dead(state, [NAME])


# --- what the API server is told ------------------------------------------------------------


PLURALS = {
    "CustomResourceDefinition": "customresourcedefinitions",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
    "APIService": "apiservices",
    "Namespace": "namespaces",
    "Service": "services",
    "EndpointSlice": "endpointslices",
}


def apply(api: client.ApiClient, obj: dict[str, Any]) -> None:
    """Server-side apply (create or converge) one object of a kind in PLURALS. Raw JSON both
    ways: the typed client takes seconds to build models of Kueue's CRD schemas."""
    version, meta = obj["apiVersion"], obj["metadata"]
    path = "/api/v1" if version == "v1" else f"/apis/{version}"
    if "namespace" in meta:
        path += f"/namespaces/{meta['namespace']}"
    path += f"/{PLURALS[obj['kind']]}/{meta['name']}?fieldManager={FIELD_MANAGER}&force=true"
    request(api, "PATCH", path, body=obj, content_type=APPLY)


def _ca_bundle(run: RunDir) -> str:
    return base64.b64encode(Pki(run.pki).ca_cert.read_bytes()).decode()


def _conversion(run: RunDir, webhook_port: int) -> dict[str, Any]:
    return {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/convert", "caBundle": _ca_bundle(run)},
            "conversionReviewVersions": ["v1"],
        },
    }


def _crd_files() -> dict[str, Path]:
    """CRD name -> file (build.sh copies the module's ``kueue.x-k8s.io_<plural>.yaml``)."""
    files = sorted((kueue_manifests_dir() / "crd").glob(f"{GROUP}_*.yaml"))
    return {f"{path.stem.split('_', 1)[1]}.{GROUP}": path for path in files}


def crd(path: Path, run: RunDir, webhook_port: int) -> dict[str, Any]:
    """One of Kueue's CRDs as the module ships it, with upstream's conversion webhook (for the
    kinds upstream converts) pointed at the manager here."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C safe loader: 10x faster here
    found: dict[str, Any] = yaml.load(path.read_text(), Loader=loader)
    if found["spec"]["names"]["plural"] in CONVERTED:
        found["spec"]["conversion"] = _conversion(run, webhook_port)
    return found


def _applied_digests(api: client.ApiClient) -> dict[str, str]:
    """CRD name -> the digest annotation, for every CRD (read as metadata only)."""
    accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
    found = request(api, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", accept=accept)
    return {
        item["metadata"]["name"]: (item["metadata"].get("annotations") or {}).get(DIGEST_ANNOTATION, "")
        for item in found.get("items") or []
    }


def apply_crds(api: client.ApiClient, run: RunDir, webhook_port: int, timeout: float = 60.0) -> None:
    """Apply the CRDs that are missing or differ from what the harness applied last, and wait
    until they are established."""
    applied = _applied_digests(api)
    conversion = json.dumps(_conversion(run, webhook_port), sort_keys=True).encode()
    changed = set()
    for name, path in _crd_files().items():
        digest = hashlib.sha256(path.read_bytes() + conversion).hexdigest()[:16]
        if applied.get(name) == digest:
            continue
        wanted = crd(path, run, webhook_port)
        wanted["metadata"].setdefault("annotations", {})[DIGEST_ANNOTATION] = digest
        apply(api, wanted)
        changed.add(name)

    def established() -> bool:
        found = request(api, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions").get("items") or []
        ok = {
            item["metadata"]["name"]
            for item in found
            if any(c["type"] == "Established" and c["status"] == "True" for c in item["status"].get("conditions") or [])
        }
        return changed <= ok

    if changed:
        fleet._wait("Kueue's CRDs to be established", established, timeout)


def _kept(webhook: dict[str, Any]) -> bool:
    for rule in webhook["rules"]:
        for group in rule["apiGroups"]:
            if group not in KEPT_RESOURCES:
                return False
            allowed = KEPT_RESOURCES[group]
            if allowed is not None and not set(rule["resources"]) <= allowed:
                return False
    return True


def webhook_configurations(run: RunDir, webhook_port: int) -> list[dict[str, Any]]:
    """Upstream's webhook/manifests.yaml, reduced to the kept webhooks, served at 127.0.0.1."""
    source = kueue_manifests_dir() / "webhook" / "manifests.yaml"
    configurations = []
    for doc in yaml.safe_load_all(source.read_text()):
        if not doc or doc.get("kind") not in WEBHOOK_CONFIGURATIONS:
            continue
        webhooks = []
        for webhook in doc["webhooks"]:
            if not _kept(webhook):
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"https://127.0.0.1:{webhook_port}{path}", "caBundle": _ca_bundle(run)}
            resources = {r for rule in webhook["rules"] for r in rule["resources"]}
            if resources & SCOPED_RESOURCES:
                webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": MANAGED_NAMESPACE}}
                webhook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            webhook["timeoutSeconds"] = WEBHOOK_TIMEOUT
            webhooks.append(webhook)
        name = WEBHOOK_CONFIGURATIONS[doc["kind"]]
        configurations.append({**doc, "metadata": {"name": name}, "webhooks": webhooks})
    return configurations


def apply_webhooks(api: client.ApiClient, run: RunDir, webhook_port: int) -> None:
    for config in webhook_configurations(run, webhook_port):
        apply(api, config)


def visibility_objects(run: RunDir, address: str, port: int) -> list[dict[str, Any]]:
    """Namespace, Service, EndpointSlice and APIServices of the visibility API."""
    meta = {"name": VISIBILITY_SERVICE, "namespace": SYSTEM_NAMESPACE}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                **meta,
                "labels": {
                    "kubernetes.io/service-name": VISIBILITY_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": FIELD_MANAGER,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    ]
    for path in sorted((kueue_manifests_dir() / "visibility").glob("apiservice_*.yaml")):
        service = yaml.safe_load(path.read_text())
        # Verify the server's certificate (issued for the Service's DNS name) instead of skipping.
        service["spec"].pop("insecureSkipTLSVerify", None)
        service["spec"]["caBundle"] = _ca_bundle(run)
        objects.append(service)
    return objects


def apply_visibility(api: client.ApiClient, run: RunDir, address: str, port: int) -> None:
    for obj in visibility_objects(run, address, port):
        apply(api, obj)


# --- readiness ------------------------------------------------------------------------------


def _webhook_answers(api: client.ApiClient) -> bool:
    """A server-side dry run of a ResourceFlavor goes through Kueue's mutating and validating
    webhooks; it succeeds only when the manager answers them."""
    flavor = {"apiVersion": f"{GROUP}/{API_VERSION}", "kind": "ResourceFlavor", "metadata": {"name": "dcloud-probe"}}
    try:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            GROUP, API_VERSION, "resourceflavors", flavor, dry_run="All", _request_timeout=10
        )
    except ApiException as error:
        return error.status == 409  # a real flavor of that name: the webhooks answered
    return True


def _visibility_discoverable(api: client.ApiClient) -> bool:
    try:
        found = client.CustomObjectsApi(api).get_api_resources(
            VISIBILITY_GROUP, VISIBILITY_VERSIONS[0], _request_timeout=10
        )
    except ApiException:
        return False
    return any(resource.name == "clusterqueues/pendingworkloads" for resource in found.resources)


def ready(api: client.ApiClient) -> bool:
    """Kueue answers its webhooks and its visibility API is discoverable."""
    return _webhook_answers(api) and _visibility_discoverable(api)


def wait_ready_external(api: client.ApiClient, timeout: float) -> None:
    """For a cluster the harness did not make (Kueue installed some other way)."""
    fleet._wait("Kueue's webhooks and visibility API to answer", lambda: ready(api), timeout)


def wait_ready(run: RunDir, api: client.ApiClient, timeout: float = READY_TIMEOUT) -> None:
    """Until the webhooks answer and the visibility API is discoverable; fail early, with the
    log's tail, when the manager exits."""
    deadline = time.monotonic() + timeout
    while True:
        state = State.load(run)
        if state is None or not running(state):
            if state is not None:
                control_plane._reap_all(state)
            raise RuntimeError(f"Kueue's manager exited while starting\n{control_plane._log_tail(run, NAME)}")
        if ready(api):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kueue not ready after {timeout:.0f}s\n{control_plane._log_tail(run, NAME)}")
        time.sleep(0.25)


# --- life cycle -----------------------------------------------------------------------------


def ensure(run: RunDir, state: State, api: client.ApiClient, log: Log) -> str | None:
    """Start Kueue (or restart it when it died), converge what the API server needs to reach
    it, and wait until it is ready. Returns why Kueue cannot run here, or None."""
    kdir = KueueDir(run.kueue)
    reason = unavailable_reason()
    if reason is None:
        try:
            address = node_ip()
        except NodeUnavailable as error:
            reason = f"the visibility API needs a non-loopback address: {error}"
    if reason is not None:
        kdir.root.mkdir(parents=True, exist_ok=True)
        kdir.unavailable.write_text(reason + "\n")
        log(f"no Kueue: {reason}")
        return reason
    kdir.unavailable.unlink(missing_ok=True)
    began = time.monotonic()
    # The ports are known before the process starts, so the CRDs' conversion webhook can be set.
    restart = not running(state) or state.processes.get(NAME, {}).get("address") != address
    if restart:
        again = NAME in state.processes
        _stop_process(run, state)
        log("starting Kueue's manager" + (" again" if again else ""))
        state.kueue_ports = _ports(state, address)
    apply_crds(api, run, state.kueue_ports["webhook"])
    crds_done = time.monotonic()
    if restart:
        _start_process(run, state, kdir, address)
    apply_webhooks(api, run, state.kueue_ports["webhook"])
    apply_visibility(api, run, address, state.kueue_ports["visibility"])
    wait_ready(run, api)
    log(f"Kueue ready in {time.monotonic() - began:.1f}s (CRDs {crds_done - began:.1f}s)")
    return None


def _stop_process(run: RunDir, state: State, grace: float = 10.0) -> None:
    info = state.processes.get(NAME)
    if info is None:
        return
    pid = int(info["pid"])
    if not control_plane.dead(state, [NAME]):
        control_plane._signal(pid, signal.SIGTERM)
        if control_plane._wait_gone(state, {NAME}, grace):
            control_plane._signal(pid, signal.SIGKILL)
            if control_plane._wait_gone(state, {NAME}, 5.0):
                raise RuntimeError(f"Kueue's manager (pid {pid}) outlived SIGKILL")
    control_plane._reap(pid)


def describe(run: RunDir, state: State) -> str:
    """One line for ``python -m tests.cluster status``."""
    if running(state):
        ports = state.kueue_ports
        address = state.processes[NAME].get("address")
        return (
            f"kueue: running, pid {state.processes[NAME]['pid']}, webhooks 127.0.0.1:{ports['webhook']}, "
            f"visibility {address}:{ports['visibility']}"
        )
    note = unavailable_note(run)
    return f"kueue: not running ({note or 'the next `up` starts it'})"


def unavailable_note(run: RunDir) -> str | None:
    """The reason the last ``up`` in ``run`` gave for running no Kueue."""
    try:
        return KueueDir(run.kueue).unavailable.read_text().strip()
    except OSError:
        return None


@contextmanager
def stopped(run: RunDir, api: client.ApiClient | None = None) -> Iterator[None]:
    """Kill Kueue's manager as a crash would (its webhooks then refuse at once, failurePolicy
    Fail), and start it again with the same ports when the block ends, waiting until it is
    ready. ``api``: an admin client (default: the run's admin kubeconfig)."""
    state = State.load(run)
    if state is None or not running(state):
        raise RuntimeError(f"no running Kueue recorded in {run.state}")
    pid = int(state.processes[NAME]["pid"])
    control_plane._signal(pid, signal.SIGKILL)
    if control_plane._wait_gone(state, {NAME}, 10.0):
        raise RuntimeError("Kueue's manager outlived SIGKILL")
    try:
        yield
    finally:
        state.processes[NAME] = {**state.processes[NAME], **_spawn(run, KueueDir(run.kueue))}
        state.save(run)
        if api is not None:
            wait_ready(run, api)
        else:
            with kube_config.new_client_from_config(config_file=str(run.admin_kubeconfig)) as admin:
                wait_ready(run, admin)


@contextmanager
def frozen(run: RunDir, api: client.ApiClient | None = None) -> Iterator[None]:
    """Stop Kueue's manager with SIGSTOP, as a hung process: its port still accepts connections
    but nothing answers, so webhook calls fail only after their timeout (WEBHOOK_TIMEOUT).
    SIGCONT when the block ends, then wait until it is ready."""
    state = State.load(run)
    if state is None or not running(state):
        raise RuntimeError(f"no running Kueue recorded in {run.state}")
    pid = int(state.processes[NAME]["pid"])
    control_plane._signal(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        control_plane._signal(pid, signal.SIGCONT)
        if api is not None:
            wait_ready(run, api)
        else:
            with kube_config.new_client_from_config(config_file=str(run.admin_kubeconfig)) as admin:
                wait_ready(run, admin)


# --- for tests ------------------------------------------------------------------------------


def pending_workloads(api: client.ApiClient, cluster_queue: str) -> list[dict[str, Any]]:
    """``GET /apis/visibility.kueue.x-k8s.io/v1beta2/clusterqueues/<name>/pendingworkloads``:
    the queue's pending workloads in order, each with ``positionInClusterQueue`` and
    ``positionInLocalQueue``."""
    path = f"/apis/{VISIBILITY_GROUP}/{VISIBILITY_VERSIONS[0]}/clusterqueues/{cluster_queue}/pendingworkloads"
    return list(get(api, path).get("items") or [])


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    accept: str = "application/json",
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One API request with the client's credentials (certificate or token), JSON both ways;
    raises ``ApiException`` on an error status."""
    headers = {"Accept": accept, **({"Content-Type": content_type} if body is not None else {})}
    method, url, headers, body, _ = api.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
    data = response.read()
    if response.status >= 300:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = data.decode(errors="replace")
        raise error
    result: dict[str, Any] = json.loads(data)
    return result


def get(api: client.ApiClient, path: str) -> dict[str, Any]:
    """GET an API path as JSON, e.g. the visibility API's pendingworkloads."""
    return request(api, "GET", path)
