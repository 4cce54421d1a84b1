"""A release of the chart with DCloud's values on the test cluster, and its hub running here.

``release_namespace`` makes a namespace that enforces Pod Security "restricted" (and warns on
pod templates), binds helm-values/rbac.yaml's ClusterRole to its ``hub`` account, and removes
all of it afterwards. :class:`Release` installs the chart there with ``helm upgrade --install``
and runs the chart's own hub from the release's objects (tests/support/helm_hub.py) with a token of
the release's ``hub`` ServiceAccount.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.layout import bin_dir
from tests.support.helm import EXAMPLE_CATALOG, RELEASE, helm, rbac_objects, require_helm_and_chart, value_args
from tests.support.helm_hub import hub_environment, hub_filesystem, outside_the_cluster, require_mount_namespaces
from tests.support.hub import DemoHub, free_port, launch_hub, stop_demo_hub

RESTRICTED_LABELS = (
    "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    "pod-security.kubernetes.io/warn=restricted", "pod-security.kubernetes.io/warn-version=latest",
)  # fmt: skip


def kubectl(cluster, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """kubectl as the cluster's admin."""
    result = subprocess.run([str(bin_dir() / "kubectl"), "--kubeconfig", cluster.admin_kubeconfig, *args],
                            input=stdin, capture_output=True, text=True, timeout=120)  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()}")
    return result


def binding_name(namespace: str) -> str:
    # The test cluster's harness already binds rbac.yaml's ClusterRole to namespace `dcloud` under
    # the file's own binding name; each release here gets a binding of its own.
    return f"dcloud-hub-nodes-{namespace}"


def release_rbac(namespace: str) -> list[dict[str, Any]]:
    objects = rbac_objects(namespace)
    for obj in objects:
        if obj["kind"] == "ClusterRoleBinding":
            obj["metadata"]["name"] = binding_name(namespace)
    return objects


def manifests(objects: list[dict[str, Any]]) -> str:
    """The objects for kubectl as one JSON List: JSON keeps a string a string, where a YAML
    round trip can turn a quoted annotation such as the chart's 4-hex-digit checksum (e.g.
    "0560") into a number the API server refuses."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


@contextlib.contextmanager
def release_namespace(cluster, namespace: str, *, bind: bool = True) -> Iterator[str]:
    require_helm_and_chart()
    kubectl(cluster, "delete", "namespace", namespace, "--ignore-not-found", "--wait=true")
    kubectl(cluster, "create", "namespace", namespace)
    kubectl(cluster, "label", "namespace", namespace, *RESTRICTED_LABELS)
    if bind:
        kubectl(cluster, "apply", "--server-side", "--field-manager=dcloud-test", "-f", "-",
                stdin=manifests(release_rbac(namespace)))  # fmt: skip
    try:
        yield namespace
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", binding_name(namespace), "--ignore-not-found", check=False)
        kubectl(cluster, "delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


class Release:
    """The release in ``namespace``, and the chart's hub running from its objects."""

    def __init__(self, cluster, namespace: str, root: Path, values: dict[str, Any] | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, *, here: bool = True) -> None:  # fmt: skip
        """``here``: the hub is to run on this machine (:meth:`start_hub`), not in its pod."""
        self.cluster, self.namespace, self.root = cluster, namespace, root
        self.port, self.hub_port, self.proxy_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.overlays: list[Path] = []
        if here:
            self.add_values(outside_the_cluster(self.port, self.hub_port, self.proxy_port))
        if values:
            self.add_values(values)
        self.secrets = secrets or {"dcloud-oidc": {"client-secret": "not-a-real-secret"}}
        self.hub: DemoHub | None = None
        self.starts = 0

    def add_values(self, values: dict[str, Any]) -> None:
        """One more values file, after the others (the site's own settings)."""
        path = self.root / f"site-{len(self.overlays)}.yaml"
        path.write_text(yaml.safe_dump(values))
        self.overlays.append(path)

    def upgrade(self, catalog: Path = EXAMPLE_CATALOG) -> float:
        """``helm upgrade --install``; returns its seconds."""
        _, chart = require_helm_and_chart()
        started = time.monotonic()
        helm("upgrade", "--install", RELEASE, str(chart), "--namespace", self.namespace,
             *value_args(self.overlays, catalog=catalog), kubeconfig=self.cluster.admin_kubeconfig)  # fmt: skip
        return time.monotonic() - started

    def objects(self) -> list[dict[str, Any]]:
        """What the release holds now (``helm get manifest``), generated tokens included."""
        out = helm("get", "manifest", RELEASE, "--namespace", self.namespace,
                   kubeconfig=self.cluster.admin_kubeconfig).stdout  # fmt: skip
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def service_account_kubeconfig(self) -> Path:
        """A kubeconfig with a token of the release's ``hub`` ServiceAccount."""
        token = kubectl(self.cluster, "-n", self.namespace, "create", "token", "hub", "--duration=2h").stdout.strip()
        admin = yaml.safe_load(Path(self.cluster.admin_kubeconfig).read_text())
        cluster_name = admin["clusters"][0]["name"]
        path = self.root / "hub-sa.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"][:1],
            "users": [{"name": "hub", "user": {"token": token}}],
            "contexts": [{"name": "hub", "context": {"cluster": cluster_name, "user": "hub",
                                                     "namespace": self.namespace}}],
            "current-context": "hub",
        }))  # fmt: skip
        path.chmod(0o600)
        return path

    def start_hub(self) -> DemoHub:
        """The chart's hub, from the release's current objects (a new pod, after a restart)."""
        require_mount_namespaces()
        self.stop_hub()
        self.starts += 1
        objects = self.objects()
        fs = hub_filesystem(objects, self.root / f"hub-{self.starts}", self.namespace, self.secrets)
        secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "hub")
        files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        token = {**files, **(secret.get("stringData") or {})}["hub.services.tests.apiToken"]
        state = self.root / "srv"  # the hub's working directory: its database outlives a restart
        env = hub_environment(fs, KUBECONFIG=str(self.service_account_kubeconfig()))
        self.hub = launch_hub(fs.command(), state, env, token, "", self.port)
        return self.hub

    def stop_hub(self) -> None:
        if self.hub is not None:
            stop_demo_hub(self.hub)
            self.hub = None

    def pods(self, selector: str) -> list[dict[str, Any]]:
        out = kubectl(self.cluster, "-n", self.namespace, "get", "pods", "-l", selector, "-o", "json").stdout
        return json.loads(out)["items"]


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


@contextlib.contextmanager
def tcp_forward(listen_host: str, target: tuple[str, int]) -> Iterator[int]:
    """Relay TCP connections from ``listen_host`` (a free port, yielded) to ``target``, until
    the block ends: how a pod on real-0 reaches the API server, which listens on loopback."""
    import socket
    import threading

    server = socket.create_server((listen_host, 0))
    server.settimeout(0.5)
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            sockets.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
