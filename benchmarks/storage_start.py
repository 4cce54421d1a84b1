"""From Start to JupyterLab answering on the real node, with a home volume: packages built once, reused after.

    .venv/bin/python -m benchmarks.storage_start [--rounds 12] [--json out.json] [--keep]

Starts (or reuses) a local control plane with node ``real-0`` (a real kubelet and containerd,
the default StorageClass ``dcloud-local`` with a real provisioner) in its own run dir, through
``python -m tests.cluster up`` (a command: nothing is imported from ``tests/``), importing only
the notebook stand-in image the SciPy environment runs. Two JupyterHub processes, alike but for
the spawner: ``dcloud`` (DCloudSpawner, a catalog with ``storage.home`` and packages from a
local index) and ``kubespawner`` (plain KubeSpawner configured with every trait DCloudSpawner
ends up with for a start without packages, so that the two create the same pod and the same
home claim: checked before timing). Both put pods on real-0 (its label, tolerations of its
taints, ``image_pull_policy: Never``), mount a home claim per user (``storage_pvc_ensure``) at
/home/jovyan, and listen for the servers on the node's address. The package index is three
tiny wheels built here (a new version of each per round), served on the node's address.

Each start is timed from ``POST /hub/api/users/<u>/server`` (with the options) until
``GET /user/<u>/lab`` through the hub's proxy, with a token, answers 200. Variants:

- ``kubespawner-a``: no packages, user ``ks-a`` (home claim made in the warm-up);
- ``dcloud-a``: no packages, user ``dc-a`` (likewise);
- ``dcloud-b``: three packages, first start of that set: user ``dc-pk`` (home made in the
  warm-up) asks for versions no earlier round asked for, so pip installs them, downloading
  wheels its cache on the home volume has never seen;
- ``dcloud-c``: the same set again, same user, right after ``dcloud-b`` was stopped.

Rounds rotate the order of (kubespawner-a, dcloud-a, dcloud-b then dcloud-c). After each
start the pod's node and the package init container's termination message are read: ``built
<key>`` for (b), ``reused <key>`` for (c), and the index must have seen no request during (c).
Where the time went is split into steps by a watch of the pods in a thread (this process's clock):
request -> pod seen -> Initialized (init containers done) -> ContainersReady -> JupyterLab 200.
Each server is stopped and its pod waited away (not timed). At the end the users' home claims
are deleted and, unless ``--keep``, the cluster is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import http.client
import http.server
import io
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubespawner import KubeSpawner
from traitlets.config import Config

from benchmarks.form_render import machine, percentile, point_kubespawner_at
from benchmarks.spawn import Hub, _plain, differences, launch
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.kube import DCloudSpawner

NAMESPACE = "dcloud"
NODE = "real-0"
NODE_SELECTOR = {"dcloud.test/node": "real"}  # real-0's own label (tests/cluster/README.md)
STORAGE_CLASS = "dcloud-local"
HOME_DIR = "/home/jovyan"
ENVIRONMENT = "scipy"  # the notebook stand-in image: jupyterhub-singleuser and JupyterLab, nothing more
GROUPS = ["researchers"]
OPTIONS = {"environment": ENVIRONMENT, "cpu": 1, "memory": "1Gi", "home": "1Gi"}
PACKAGES = ("dcloud-bench-alpha", "dcloud-bench-beta", "dcloud-bench-gamma")
USERS = {"kubespawner-a": "ks-a", "dcloud-a": "dc-a", "dcloud-bc": "dc-pk"}
VARIANTS = ("kubespawner-a", "dcloud-a", "dcloud-b", "dcloud-c")
POLL = 0.1  # seconds between requests for /user/<u>/lab
CACHE = Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s"))
# KubeSpawner traits it calls with the spawner when they are callables (DCloud's security defaults)
CALLED_TRAITS = ("uid", "gid", "fs_gid", "supplemental_gids", "container_security_context", "pod_security_context")

HUB_CONFIG = """\
import json
settings = json.loads({settings!r})
c.JupyterHub.bind_url = f"http://127.0.0.1:{{settings['port']}}"
c.JupyterHub.hub_bind_url = f"http://{{settings['hub_ip']}}:{{settings['hub_port']}}"
c.JupyterHub.hub_connect_url = f"http://{{settings['hub_ip']}}:{{settings['hub_port']}}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{settings['proxy_port']}}"
c.ConfigurableHTTPProxy.command = settings["proxy"]
c.JupyterHub.db_url = "sqlite:///" + settings["state"] + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = settings["state"] + "/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = set(settings["users"])
c.JupyterHub.load_groups = {{g: {{"users": settings["users"]}} for g in settings["groups"]}}
c.JupyterHub.services = [{{"name": "bench", "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "servers",
                                        "access:servers"]}}]
classes = {{"DCloudSpawner": "dcloud", "KubeSpawner": "kubespawner.KubeSpawner"}}
c.JupyterHub.spawner_class = classes[settings["section"]]
for name, value in settings["spawner"].items():
    setattr(getattr(c, settings["section"]), name, value)
"""


def log(message: str) -> None:
    print(f"[storage-start {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- the cluster ------------------------------------------------------------------------------------


def harness(run_dir: Path, action: str, *args: str, images: str = "") -> str:
    """``python -m tests.cluster`` on the benchmark's run dir, with real-0 (and only ``images``
    imported into it); its last stdout line."""
    env = {**os.environ, "DCLOUD_CLUSTER_DIR": str(run_dir)}
    env.pop("DCLOUD_REAL_NODE", None)
    if images:
        env["DCLOUD_NODE_IMAGES"] = images
    result = subprocess.run(
        [sys.executable, "-m", "tests.cluster", action, *args], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def local_images() -> dict[str, str]:
    """The catalog's image names -> the images built here (``python -m tests.cluster.images names``)."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.cluster.images", "names"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    return dict(line.split()[:2] for line in out.splitlines() if line.strip() and not line.startswith("("))


def environment_image() -> str:
    """The image the catalog names for ``ENVIRONMENT`` (CPU)."""
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    return next(e["image"]["cpu"] for e in data["environments"] if e["id"] == ENVIRONMENT)


def real_node(core: Any, storage: Any, run_dir: Path) -> tuple[str, list[dict[str, str]]]:
    """real-0's address and tolerations of its taints; fails where the cluster has no real-0."""
    try:
        node = core.read_node(NODE)
    except Exception as exc:
        note = run_dir / "node" / "unavailable"
        why = note.read_text().strip() if note.exists() else str(exc)
        raise SystemExit(f"the cluster has no node {NODE} (needs root; see tests/cluster/README.md): {why}") from None
    if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
        raise SystemExit(f"node {NODE} is not Ready")
    address = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    tolerations = [
        {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect} for t in node.spec.taints or []
    ]
    storage.read_storage_class(STORAGE_CLASS)  # raises where the provisioner is missing
    return address, tolerations


# -- a package index of three tiny wheels ----------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of one module that knows its version."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: dcloud-bench\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    wheel = folder / f"{dist}-py3-none-any.whl"
    wheel.write_bytes(buffer.getvalue())
    return wheel


def build_index(root: Path, versions: list[str]) -> None:
    """``root/simple/``: a PEP 503 index of every package in every version, with hashes."""
    links = []
    for name in PACKAGES:
        project = root / "simple" / name
        project.mkdir(parents=True, exist_ok=True)
        anchors = []
        for version in versions:
            wheel = build_wheel(project, name, version)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            anchors.append(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>')
        (project / "index.html").write_text("<!DOCTYPE html><html><body>" + "".join(anchors) + "</body></html>\n")
        links.append(f'<a href="{name}/">{name}</a>')
    (root / "simple" / "index.html").write_text("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>\n")


@dataclass
class Index:
    url: str
    server: http.server.ThreadingHTTPServer
    requests: list[str] = field(default_factory=list)  # paths pip asked for, in order

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_index(root: Path, host: str) -> Index:
    seen: list[str] = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Index(f"http://{host}:{server.server_address[1]}/simple/", server, seen)


# -- the catalog, and the pod both hubs make ---------------------------------------------------------


def write_catalog(path: Path, index_url: str) -> Path:
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    names = local_images()
    for environment in data["environments"]:
        environment["image"] = {kind: names.get(image, image) for kind, image in environment["image"].items()}
    data["packages"] = {"enabled": True, "max_count": 10, "index_url": index_url}
    data["storage"] = {"home": {"storage_class": STORAGE_CLASS, "min": "1Gi", "default": "1Gi", "max": "4Gi"}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _value(spawner: Any, name: str) -> Any:
    value = getattr(spawner, name)
    return value(spawner) if callable(value) and name in CALLED_TRAITS else value


async def kubespawner_traits(
    base: dict[str, Any], catalog: Path, user: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The KubeSpawner traits where DCloudSpawner (configured with ``base`` and ``catalog``),
    after taking ``OPTIONS`` from ``user``, differs from a plain KubeSpawner with ``base``;
    DCloud's pod and home claim manifests. Reads the claim (absent: nothing changes)."""
    cfg = Config()
    for name, value in base.items():
        setattr(cfg.KubeSpawner, name, value)
    cfg.DCloudSpawner.catalog_path = str(catalog)
    cfg.DCloudSpawner.show_availability = False
    who = OfflineUser(user, tuple(GROUPS))
    ours = DCloudSpawner(user=who, hub=offline_hub(), config=cfg)
    await ours.dcloud_apply_user_options(ours, copy.deepcopy(OPTIONS))
    await ours.load_user_options()
    plain = KubeSpawner(user=who, hub=offline_hub(), config=cfg)
    traits: dict[str, Any] = dict(base)
    for name in KubeSpawner.class_trait_names(config=True):
        try:
            value, default = _plain(_value(ours, name)), _plain(_value(plain, name))
        except (TypeError, ValueError):
            continue
        if value != default:
            traits[name] = value
    pod = (await ours.get_pod_manifest()).to_dict()
    claim = ours.get_pvc_manifest().to_dict()
    ours.release_resources()
    reset_hub_state()
    return traits, pod, claim


async def plain_manifests(traits: dict[str, Any], user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = Config()
    for name, value in traits.items():
        setattr(cfg.KubeSpawner, name, value)
    spawner = KubeSpawner(user=OfflineUser(user, tuple(GROUPS)), hub=offline_hub(), config=cfg)
    return (await spawner.get_pod_manifest()).to_dict(), spawner.get_pvc_manifest().to_dict()


async def same_pods(base: dict[str, Any], catalog: Path, hub_kubeconfig: str) -> dict[str, Any]:
    await point_kubespawner_at(hub_kubeconfig)
    user = "same-pod-check"  # a user with no claim: DCloud's plan for a first start
    traits, pod, claim = await kubespawner_traits(base, catalog, user)
    their_pod, their_claim = await plain_manifests(traits, user)
    diff = differences(pod, their_pod) + differences(claim, their_claim)
    if diff:
        raise AssertionError("the two hubs would not make the same pod and claim:\n" + "\n".join(diff))
    return traits


# -- the hubs and one start ---------------------------------------------------------------------------


def start_hub(
    name: str, state: Path, section: str, spawner: dict[str, Any], kubeconfig: str, hub_ip: str, users: list[str]
) -> Hub:
    state.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    settings = {
        "port": port,
        "hub_ip": hub_ip,
        "hub_port": free_port(hub_ip),
        "proxy_port": free_port(),
        "state": str(state),
        "proxy": [sys.executable, "-m", "dcloud_spawner.demo.proxy"],
        "token": token,
        "users": users,
        "groups": GROUPS,
        "section": section,
        "spawner": spawner,
    }
    return launch(name, state, HUB_CONFIG.format(settings=json.dumps(settings)), kubeconfig, port, token)


def lab_status(hub: Hub, user: str) -> int:
    """The status of ``GET /user/<user>/lab`` through the proxy, redirects not followed."""
    where = urlsplit(hub.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request("GET", f"/user/{user}/lab", headers={"Authorization": f"token {hub.token}"})
        reply = connection.getresponse()
        reply.read()
        return reply.status
    except OSError:
        return 0
    finally:
        connection.close()


def server_model(hub: Hub, user: str) -> dict[str, Any] | None:
    status, model = hub.api("GET", f"/users/{user}")
    assert status == 200, (status, model)
    return (model.get("servers") or {}).get("")


def user_pods(core: Any, user: str) -> list[Any]:
    return core.list_namespaced_pod(NAMESPACE, label_selector=f"hub.jupyter.org/username={user}").items


@dataclass
class Start:
    seconds: float
    node: str
    installer: str | None  # the package init container's termination message
    installer_s: float | None  # its run time, as the kubelet reports it (whole seconds)
    index_requests: int
    phases: dict[str, float]  # seconds of each step: see PHASES


# Where the time goes: request -> the pod seen -> its init containers done (Initialized) -> its
# containers ready -> JupyterLab answering. The pod's marks are when a watch of this process saw
# them (the API server's own timestamps have whole seconds only).
PHASES = ("to_pod_seen", "to_initialized", "to_containers_ready", "to_lab_answering")


class PodWatch:
    """When each server pod (by uid) was first seen, Initialized and ContainersReady, by this
    process's clock, from a watch of the namespace's pods in a thread."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.marks: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        while not self.done.is_set():
            try:
                for event in watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    NAMESPACE,
                    label_selector="hub.jupyter.org/username",
                    timeout_seconds=30,
                ):
                    self._saw(event["object"], time.time())
                    if self.done.is_set():
                        return
            except Exception as exc:  # the next stream lists again; a mark seen then is late, not lost
                if self.done.is_set():
                    return
                log(f"pod watch: {exc!r}")
                time.sleep(0.5)

    def _saw(self, pod: Any, when: float) -> None:
        true = {c.type for c in (pod.status.conditions or []) if c.status == "True"}
        with self.lock:
            marks = self.marks.setdefault(pod.metadata.uid, {"seen": when})
            for kind in ("Initialized", "ContainersReady"):
                if kind in true:
                    marks.setdefault(kind, when)

    def phases(self, uid: str, posted: float, answered: float) -> dict[str, float]:
        deadline = time.monotonic() + 5
        while True:
            with self.lock:
                marks = dict(self.marks.get(uid, {}))
            if {"seen", "Initialized", "ContainersReady"} <= marks.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        times = [posted, marks.get("seen"), marks.get("Initialized"), marks.get("ContainersReady"), answered]
        if None in times:
            raise RuntimeError(f"the pod watch missed a mark of pod {uid}: {marks}")
        return {name: round(b - a, 3) for name, a, b in zip(PHASES, times[:-1], times[1:], strict=True)}

    def close(self) -> None:
        self.done.set()


def start(
    hub: Hub, core: Any, pods: PodWatch, index: Index, user: str, options: dict[str, Any], timeout: float = 300
) -> Start:
    """Seconds from the REST request until JupyterLab answers 200 through the proxy; then what
    the pod says about its node and the package init container."""
    requests_before = len(index.requests)
    posted = time.time()
    began = time.perf_counter()
    status, body = hub.api("POST", f"/users/{user}/server", copy.deepcopy(options))
    if status not in (201, 202):
        raise RuntimeError(f"{hub.name}: start of {user} answered {status} {body}")
    polls = 0
    while lab_status(hub, user) != 200:
        polls += 1
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"{hub.name}: JupyterLab of {user} did not answer (see {hub.state / 'hub.log'})")
        if polls % 20 == 0 and server_model(hub, user) is None:
            raise RuntimeError(f"{hub.name}: the start of {user} failed (see {hub.state / 'hub.log'})")
        time.sleep(POLL)
    seconds = time.perf_counter() - began
    answered = time.time()
    (pod,) = user_pods(core, user)
    message, ran = None, None
    for status_ in pod.status.init_container_statuses or []:
        done = status_.state.terminated
        if done is not None:
            message = (done.message or "").strip()
            ran = (done.finished_at - done.started_at).total_seconds()
    timing = pods.phases(pod.metadata.uid, posted, answered)
    return Start(seconds, pod.spec.node_name, message, ran, len(index.requests) - requests_before, timing)


def stop(hub: Hub, core: Any, user: str, timeout: float = 120) -> None:
    """Stop the server and wait until the hub says so and its pod is gone (not timed)."""
    hub.api("DELETE", f"/users/{user}/server")
    deadline = time.monotonic() + timeout
    while server_model(hub, user) is not None or user_pods(core, user):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{hub.name}: the server of {user} did not stop")
        time.sleep(0.2)


def packages(version: str) -> dict[str, Any]:
    return {**OPTIONS, "packages": [f"{name}=={version}" for name in PACKAGES]}


def delete_claims(core: Any, users: list[str], timeout: float = 90) -> int:
    """Delete the users' home claims and wait until their volumes are gone; how many there were."""
    selector = f"hub.jupyter.org/username in ({','.join(users)})"
    claims = core.list_namespaced_persistent_volume_claim(NAMESPACE, label_selector=selector).items
    volumes = {c.spec.volume_name for c in claims if c.spec.volume_name}
    for claim in claims:
        core.delete_namespaced_persistent_volume_claim(claim.metadata.name, NAMESPACE)
    deadline = time.monotonic() + timeout
    while volumes & {v.metadata.name for v in core.list_persistent_volume().items}:
        if time.monotonic() > deadline:
            log(f"volumes still there after {timeout:.0f} s: {sorted(volumes)}")
            break
        time.sleep(1)
    return len(claims)


# -- the run --------------------------------------------------------------------------------------------


def summarize(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(samples),
        "p95_s": percentile(samples, 0.95),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": [round(s, 3) for s in samples],
    }


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    pairs = {
        "dcloud-a / kubespawner-a": ("dcloud-a", "kubespawner-a"),
        "dcloud-c / dcloud-a": ("dcloud-c", "dcloud-a"),
        "dcloud-c / kubespawner-a": ("dcloud-c", "kubespawner-a"),
        "dcloud-b / dcloud-a": ("dcloud-b", "dcloud-a"),
        "dcloud-b / kubespawner-a": ("dcloud-b", "kubespawner-a"),
    }
    return {
        label: {
            "median": summary[a]["median_s"] / summary[b]["median_s"],
            "p95": summary[a]["p95_s"] / summary[b]["p95_s"],
        }
        for label, (a, b) in pairs.items()
    }


def phase_medians(starts: list[Start]) -> dict[str, float]:
    return {name: statistics.median(s.phases[name] for s in starts) for name in PHASES}


def table(summary: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]]) -> str:
    head = " | ".join(f"{p.removeprefix('to_').replace('_', ' ')}" for p in PHASES)
    lines = [
        f"| variant | median s | p95 s | min s | max s | median s of each step: {head} |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in VARIANTS:
        s = summary[name]
        steps = " / ".join(f"{s['phase_medians_s'][p]:.1f}" for p in PHASES)
        lines.append(
            f"| {name} | {s['median_s']:.2f} | {s['p95_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} | {steps} |"
        )
    lines += ["", "| ratio | of medians | of p95 |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {r['median']:.2f}x | {r['p95']:.2f}x |" for label, r in ratio.items()]
    return "\n".join(lines)


def run_rounds(
    hubs: dict[str, Hub], core: Any, pods: PodWatch, index: Index, rounds: int
) -> tuple[dict[str, list[Start]], list]:
    results: dict[str, list[Start]] = {name: [] for name in VARIANTS}
    loads = []

    def unit(name: str, i: int) -> None:
        if name == "dcloud-bc":
            user, options = USERS[name], packages(f"1.0.{i + 1}")  # a set this home has never had
            for variant in ("dcloud-b", "dcloud-c"):
                results[variant].append(start(hubs["dcloud"], core, pods, index, user, options))
                stop(hubs["dcloud"], core, user)
        else:
            hub = hubs[name.split("-")[0]]
            results[name].append(start(hub, core, pods, index, USERS[name], OPTIONS))
            stop(hub, core, USERS[name])

    units = list(USERS)
    for i in range(rounds):
        for name in units[i % 3 :] + units[: i % 3]:
            unit(name, i)
        loads.append(os.getloadavg())
        log(
            f"round {i + 1}/{rounds}: "
            + ", ".join(f"{k} {v[-1].seconds:.2f} s" for k, v in results.items())
            + f"; (b) {results['dcloud-b'][-1].installer!r:.20}, (c) {results['dcloud-c'][-1].installer!r:.20};"
            + f" load {loads[-1][0]:.2f}"
        )
    return results, loads


def check(results: dict[str, list[Start]]) -> dict[str, Any]:
    """Every pod on real-0; (a) without an installer; (b) built, with requests to the index;
    (c) reused, with none."""
    problems = []
    for name, starts in results.items():
        for i, s in enumerate(starts):
            if s.node != NODE:
                problems.append(f"{name} #{i + 1} ran on {s.node}")
            if name.endswith("-a") and s.installer is not None:
                problems.append(f"{name} #{i + 1} had an init container")
            if name == "dcloud-b" and not ((s.installer or "").startswith("built ") and s.index_requests > 0):
                problems.append(f"dcloud-b #{i + 1}: {s.installer!r}, {s.index_requests} index requests")
            if name == "dcloud-c" and not ((s.installer or "").startswith("reused ") and s.index_requests == 0):
                problems.append(f"dcloud-c #{i + 1}: {s.installer!r}, {s.index_requests} index requests")
    if problems:
        raise AssertionError("\n".join(problems))
    return {
        "pods_on": NODE,
        "b_installer_messages": sorted({(s.installer or "").split()[0] for s in results["dcloud-b"]}),
        "b_index_requests": [s.index_requests for s in results["dcloud-b"]],
        "b_installer_s": [s.installer_s for s in results["dcloud-b"]],
        "c_installer_messages": sorted({(s.installer or "").split()[0] for s in results["dcloud-c"]}),
        "c_index_requests": [s.index_requests for s in results["dcloud-c"]],
        "c_installer_s": [s.installer_s for s in results["dcloud-c"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.storage_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("DCLOUD_CLUSTER_DIR") or CACHE / "bench-storage")
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (the claims are deleted)")
    args = parser.parse_args(argv)

    from kubernetes import client
    from kubernetes import config as kube_config

    load_start = os.getloadavg()
    began = time.perf_counter()
    images = local_images()
    admin = harness(args.run_dir, "up", "--no-build", images=images[environment_image()])
    cluster_s = time.perf_counter() - began
    hub_kubeconfig = str(Path(admin).with_name("hub.kubeconfig"))
    api = kube_config.new_client_from_config(config_file=admin)
    core = client.CoreV1Api(api)
    address, tolerations = real_node(core, client.StorageV1Api(api), args.run_dir)
    log(f"cluster up in {cluster_s:.1f} s; {NODE} at {address}")

    work = Path(tempfile.mkdtemp(prefix="dcloud-storage-bench-"))
    build_index(work / "index", [f"1.0.{i}" for i in range(args.rounds + 1)])
    index = serve_index(work / "index", address)
    watch_api = kube_config.new_client_from_config(config_file=admin)
    pods = PodWatch(client.CoreV1Api(watch_api))
    hubs: dict[str, Hub] = {}
    ok = False
    try:
        catalog = write_catalog(work / "catalog.yaml", index.url)
        base = {
            "namespace": NAMESPACE,
            "node_selector": dict(NODE_SELECTOR),
            "tolerations": tolerations,
            "image_pull_policy": "Never",  # imported into real-0; nothing is pulled
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
            "volume_mounts": [{"name": "home", "mountPath": HOME_DIR}],
            "storage_pvc_ensure": True,
        }
        traits = asyncio.run(same_pods(base, catalog, hub_kubeconfig))
        log(f"plain KubeSpawner takes {len(traits)} traits; the two pods and home claims are equal")
        timeouts = {"start_timeout": 180, "http_timeout": 120}
        hubs = {
            "dcloud": start_hub(
                "dcloud",
                work / "dcloud",
                "DCloudSpawner",
                {**base, **timeouts, "catalog_path": str(catalog)},
                hub_kubeconfig,
                address,
                [USERS["dcloud-a"], USERS["dcloud-bc"]],
            ),
            "kubespawner": start_hub(
                "kubespawner",
                work / "kubespawner",
                "KubeSpawner",
                {**traits, **timeouts},
                hub_kubeconfig,
                address,
                [USERS["kubespawner-a"]],
            ),
        }
        # warm-up, untimed: each user's home claim is made and bound, each hub's first start done
        warm = {}
        for hub, user, options in (
            (hubs["kubespawner"], USERS["kubespawner-a"], OPTIONS),
            (hubs["dcloud"], USERS["dcloud-a"], OPTIONS),
            (hubs["dcloud"], USERS["dcloud-bc"], packages("1.0.0")),
        ):
            warm[user] = start(hub, core, pods, index, user, options).seconds
            stop(hub, core, user)
        log("warm-up (homes made): " + ", ".join(f"{u} {s:.2f} s" for u, s in warm.items()))
        results, loads = run_rounds(hubs, core, pods, index, args.rounds)
        checks = check(results)
        ok = True
    finally:
        for hub in hubs.values():
            hub.stop()
        index.close()
        pods.close()
        claims = delete_claims(core, list(USERS.values()))
        log(f"deleted {claims} home claims")
        api.close()
        watch_api.close()
        if not args.keep:
            harness(args.run_dir, "down")
        if ok:
            shutil.rmtree(work, ignore_errors=True)  # kept after a failure: the hubs' logs are there
        else:
            log(f"kept {work} (hub logs)")
    load_end = os.getloadavg()
    summary = {
        name: {
            **summarize([s.seconds for s in starts]),
            "phase_medians_s": phase_medians(starts),
            "phases_s": [s.phases for s in starts],
        }
        for name, starts in results.items()
    }
    ratio = ratios(summary)
    goal = {k: ratio["dcloud-c / dcloud-a"][k] <= 1.2 for k in ("median", "p95")}
    print(table(summary, ratio))
    print(
        f"\n(c) <= 1.2 x dcloud-(a): median {'yes' if goal['median'] else 'NO'}, p95 {'yes' if goal['p95'] else 'NO'};"
        f" (c) ran no pip in {len(results['dcloud-c'])} of {len(results['dcloud-c'])} starts (reused, no index"
        f" request); load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end"
    )
    if args.json:
        report = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "load_average_per_round": loads,
            "cluster_up_s": cluster_s,
            "rounds": args.rounds,
            "options": OPTIONS,
            "packages": list(PACKAGES),
            "traits_from_dcloud": sorted(traits),
            "warmup_s": warm,
            "summary": summary,
            "ratios": ratio,
            "goal_c_within_1_2x_dcloud_a": goal,
            "checks": checks,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
