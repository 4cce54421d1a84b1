"""Spawn overhead through a real JupyterHub: DCloudSpawner against plain KubeSpawner, same pod.

    .venv/bin/python -m benchmarks.spawn [--rounds 30] [--json out.json] [--keep]

Starts (or reuses) a local control plane with ``tests.cluster`` in its own run dir (KWOK nodes
only: ``DCLOUD_REAL_NODE=0``), and two JupyterHub processes against it, alike but for the
spawner: ``dcloud`` (DCloudSpawner with the demo catalog) and ``kubespawner`` (plain
KubeSpawner, configured with every trait DCloudSpawner ends up with for the request, so the
two hubs create the same pod: checked by comparing the manifests before timing). A KWOK pod
runs nothing, so a stand-in server listening on every local address answers the hub's
readiness check at the pod's (loopback) IP.

Each round, for each hub in turn (the order alternating), one REST request
``POST /hub/api/users/bench/server`` with the user's options (one T4 GPU, PyTorch, 1 CPU,
1 GiB) is timed until the hub's user model says the server is ready; then the server is
stopped and its pod waited away (not timed). Reports median and p95 of each and the
DCloud / KubeSpawner ratio of medians. Stops the hubs and, unless ``--keep``, the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubespawner import KubeSpawner
from traitlets.config import Config

from benchmarks.form_render import cluster_command, machine, percentile, point_kubespawner_at
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.kube import DCloudSpawner

NAMESPACE = "dcloud"  # the harness's namespace for servers, where the hub's Role applies
USER, GROUPS = "bench", ["researchers"]
OPTIONS = {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 1, "memory": "1Gi"}
CACHE = Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s"))

HUB_CONFIG = """\
import json
settings = json.loads({settings!r})
c.JupyterHub.bind_url = f"http://127.0.0.1:{{settings['port']}}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{{settings['hub_port']}}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{settings['proxy_port']}}"
c.ConfigurableHTTPProxy.command = settings["proxy"]
c.JupyterHub.db_url = "sqlite:///" + settings["state"] + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = settings["state"] + "/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{settings["user"]}}
c.JupyterHub.load_groups = {{g: {{"users": [settings["user"]]}} for g in settings["groups"]}}
c.JupyterHub.services = [{{"name": "bench", "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "servers"]}}]
classes = {{"DCloudSpawner": "dcloud", "KubeSpawner": "kubespawner.KubeSpawner"}}
c.JupyterHub.spawner_class = classes[settings["section"]]
for name, value in settings["spawner"].items():
    setattr(getattr(c, settings["section"]), name, value)
"""


def log(message: str) -> None:
    print(f"[spawn {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the pod both hubs make -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as JSON data, or raise TypeError (callables, objects)."""
    return json.loads(json.dumps(value))


async def dcloud_traits(
    port: int,
    catalog: Path = DEMO_CATALOG,
    user: str = USER,
    groups: tuple[str, ...] = tuple(GROUPS),
    options: dict[str, Any] = OPTIONS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """KubeSpawner traits where DCloudSpawner, after taking ``options`` from ``user``, differs
    from a plain KubeSpawner; and DCloud's pod manifest."""
    common = {"namespace": NAMESPACE, "port": port}
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(catalog)
    cfg.DCloudSpawner.show_availability = False  # offline: no cluster to watch here
    for name, value in common.items():
        setattr(cfg.KubeSpawner, name, value)
    who = OfflineUser(user, groups)
    ours = DCloudSpawner(user=who, hub=offline_hub(), config=cfg)
    await ours.dcloud_apply_user_options(ours, copy.deepcopy(options))
    await ours.load_user_options()
    plain = KubeSpawner(user=who, hub=offline_hub(), config=cfg)
    traits: dict[str, Any] = dict(common)
    for name in KubeSpawner.class_trait_names(config=True):
        try:
            value, base = _plain(getattr(ours, name)), _plain(getattr(plain, name))
        except (TypeError, ValueError):
            continue
        if value != base:
            traits[name] = value
    manifest = (await ours.get_pod_manifest()).to_dict()
    ours.release_resources()
    reset_hub_state()
    return traits, manifest


async def plain_manifest(
    traits: dict[str, Any], user: str = USER, groups: tuple[str, ...] = tuple(GROUPS)
) -> dict[str, Any]:
    cfg = Config()
    for name, value in traits.items():
        setattr(cfg.KubeSpawner, name, value)
    spawner = KubeSpawner(user=OfflineUser(user, groups), hub=offline_hub(), config=cfg)
    return (await spawner.get_pod_manifest()).to_dict()


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


# -- a stand-in for the server in the pod ----------------------------------------------------------


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stand_in_server() -> tuple[ThreadingHTTPServer, int]:
    """Answers on every local address (KWOK's pod IPs are loopback ones) at a free port."""
    server = ThreadingHTTPServer(("0.0.0.0", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


# -- the hubs ---------------------------------------------------------------------------------------


@dataclass
class Hub:
    name: str
    url: str
    token: str
    process: subprocess.Popen
    state: Path

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/hub/api{path}", data=data, method=method, headers={"Authorization": f"token {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:  # e.g. the proxy's error page while the hub starts
            return status, raw.decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_hub(name: str, state: Path, section: str, spawner: dict[str, Any], kubeconfig: str) -> Hub:
    state.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    settings = {
        "port": port,
        "hub_port": free_port(),
        "proxy_port": free_port(),
        "state": str(state),
        "proxy": [sys.executable, "-m", "dcloud_spawner.demo.proxy"],
        "token": token,
        "user": USER,
        "groups": GROUPS,
        "section": section,
        "spawner": spawner,
    }
    return launch(name, state, HUB_CONFIG.format(settings=json.dumps(settings)), kubeconfig, port, token)


def launch(name: str, state: Path, config_text: str, kubeconfig: str, port: int, token: str) -> Hub:
    """Start ``jupyterhub`` with ``config_text`` (logging to state/hub.log); wait until its API answers."""
    config = state / "jupyterhub_config.py"
    config.write_text(config_text)
    output = open(state / "hub.log", "w")  # lives as long as the hub
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(config)],
        cwd=state,
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": kubeconfig},
        start_new_session=True,
    )
    hub = Hub(name, f"http://127.0.0.1:{port}", token, process, state)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hub {name} exited: see {state / 'hub.log'}")
        try:
            if hub.api("GET", "/")[0] == 200:
                return hub
        except OSError:
            pass
        time.sleep(0.3)
    hub.stop()
    raise RuntimeError(f"hub {name} did not answer: see {state / 'hub.log'}")


def server_model(hub: Hub) -> dict[str, Any] | None:
    status, model = hub.api("GET", f"/users/{USER}")
    assert status == 200, (status, model)
    return (model.get("servers") or {}).get("")


def spawn_once(hub: Hub, core: Any, timeout: float = 120) -> float:
    """Seconds from the REST request to the hub's "ready"; then stop and wait the pod away."""
    began = time.perf_counter()
    status, body = hub.api("POST", f"/users/{USER}/server", copy.deepcopy(OPTIONS))
    if status not in (201, 202):
        raise RuntimeError(f"{hub.name}: spawn answered {status} {body}")
    while not ((server := server_model(hub)) and server.get("ready")):
        if server is None or time.perf_counter() - began > timeout:
            raise RuntimeError(f"{hub.name}: spawn did not get ready (see {hub.state / 'hub.log'})")
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    hub.api("DELETE", f"/users/{USER}/server")
    deadline = time.monotonic() + timeout
    while (
        server_model(hub) is not None
        or core.list_namespaced_pod(NAMESPACE, label_selector=f"hub.jupyter.org/username={USER}").items
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{hub.name}: the server did not stop")
        time.sleep(0.2)
    return seconds


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.spawn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("DCLOUD_CLUSTER_DIR") or CACHE / "bench-spawn")
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)

    from kubernetes import client
    from kubernetes import config as kube_config

    timeouts = {"start_timeout": 120, "http_timeout": 60}
    hubs: list[Hub] = []
    results: dict[str, list[float]] = {"dcloud": [], "kubespawner": []}
    began = time.perf_counter()
    admin = cluster_command(args.run_dir, "up", "--no-build")
    cluster_s = time.perf_counter() - began
    server, port = stand_in_server()
    state: Path | None = None
    try:
        hub_kubeconfig = str(Path(admin).with_name("hub.kubeconfig"))
        asyncio.run(point_kubespawner_at(hub_kubeconfig))  # KubeSpawner objects load it when made
        traits, ours = asyncio.run(dcloud_traits(port))
        theirs = asyncio.run(plain_manifest(traits))
        diff = differences(ours, theirs)
        if diff:
            raise AssertionError("the two hubs would not make the same pod:\n" + "\n".join(diff))
        log(f"plain KubeSpawner takes {len(traits)} traits from DCloud's plan; the two pod manifests are equal")
        core = client.CoreV1Api(kube_config.new_client_from_config(config_file=admin))
        state = Path(tempfile.mkdtemp(prefix="dcloud-spawn-bench-"))
        ours_config = {"namespace": NAMESPACE, "port": port, "catalog_path": str(DEMO_CATALOG), **timeouts}
        hubs = [
            start_hub("dcloud", state / "dcloud", "DCloudSpawner", ours_config, hub_kubeconfig),
            start_hub("kubespawner", state / "kubespawner", "KubeSpawner", {**traits, **timeouts}, hub_kubeconfig),
        ]
        for hub in hubs:  # one untimed spawn each: imports, watches, first connections
            spawn_once(hub, core)
        for i in range(args.rounds):
            for hub in hubs if i % 2 == 0 else hubs[::-1]:
                results[hub.name].append(spawn_once(hub, core))
            log(f"round {i + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in results.items()))
    finally:
        for hub in hubs:
            hub.stop()
        server.shutdown()
        if not args.keep:
            cluster_command(args.run_dir, "down")
    if state is not None:
        shutil.rmtree(state, ignore_errors=True)  # kept after a failure: the hubs' logs are there
    summary = {
        name: {
            "median_ms": statistics.median(v) * 1000,
            "p95_ms": percentile(v, 0.95) * 1000,
            "samples_ms": [round(x * 1000, 1) for x in v],
        }
        for name, v in results.items()
    }
    ratio = summary["dcloud"]["median_ms"] / summary["kubespawner"]["median_ms"]
    print("| spawner | median ms | p95 ms | DCloud / KubeSpawner (median) |\n| --- | ---: | ---: | --- |")
    for name, s in summary.items():
        print(f"| {name} | {s['median_ms']:.0f} | {s['p95_ms']:.0f} | {f'{ratio:.2f}x' if name == 'dcloud' else '—'} |")
    if args.json:
        report = {
            "machine": machine(),
            "cluster_up_s": cluster_s,
            "rounds": args.rounds,
            "options": OPTIONS,
            "traits_from_dcloud": sorted(traits),
            "summary": summary,
            "ratio_of_medians": ratio,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
