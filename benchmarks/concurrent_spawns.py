"""100 users spawn at once through a real JupyterHub: DCloudSpawner, then plain KubeSpawner
spawning exactly the pods DCloud granted.

    .venv/bin/python -m benchmarks.concurrent_spawns [--json out.json] [--keep]

Its own cluster (``tests.cluster`` command, run dir ``~/.cache/dcloud-k8s/bench-concurrent``,
KWOK nodes only: 16 A100, 8 T4, 7 MIG slices, two CPU nodes). The catalog is the demo's plus
a ``staff`` group (CPU only) and a quota of 24 GPUs for ``researchers`` (the demo already gives
``students`` 4). 34 students ask for one T4 each, 34 researchers for two A100s (12), one MIG
slice (10) or one T4 (12), 32 staff for a CPU-only server: more than the fleet has of each GPU
class (24 A100s asked of 16, 10 slices of 7, 46 T4s of 8) and more than either group quota, so
both kinds of limit bind. JupyterHub's ``concurrent_spawn_limit`` is set to 100.

All 100 ``POST /hub/api/users/<name>/server`` requests (``user_options``) are released at
once. A request ends as ``Running`` when the hub says the server is ready and the API server
shows its pod Running on a node, or with the sentence the user got (a 400's message, or the
last progress event of a spawn that failed). A KWOK pod runs nothing: a stand-in HTTP server on
every local address answers the hub's readiness checks. Checks from the API server's pods
(admin kubeconfig): GPUs held per class within the fleet's, each group quota held, no pod left
Pending, every request ended, the pods are those of the Running outcomes.

Then the servers are stopped, and a second hub with plain KubeSpawner (every trait DCloud sets
for each kind of request, checked to give the same pod manifest) spawns servers at once, twice:
the granted users' only (same resources), then all 100 requests, the same 100 pods, on a fleet
grown (KWOK copies of its nodes) until every one of them fits, since plain KubeSpawner knows no
quota and would leave the rest Pending. Reports the wall times (first request sent to last
outcome) and DCloud's ratio to each. Stops the hubs and, unless ``--keep``, the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from benchmarks.form_render import cluster_command, machine, percentile, point_kubespawner_at
from benchmarks.spawn import (
    CACHE,
    NAMESPACE,
    Hub,
    dcloud_traits,
    differences,
    free_port,
    launch,
    plain_manifest,
    stand_in_server,
)
from dcloud_spawner.demo import DEMO_CATALOG

SPAWN_LIMIT = 100
RESEARCHERS_QUOTA = 24
T4 = {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 1, "memory": "1Gi"}
A100 = {"environment": "pytorch", "gpu": {"type": "a100", "count": 2}, "cpu": 1, "memory": "1Gi"}
MIG = {"environment": "pytorch", "gpu": {"type": "a100-mig-1g", "count": 1}, "cpu": 1, "memory": "1Gi"}
CPU = {"environment": "scipy", "cpu": 1, "memory": "1Gi"}
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb")
PRODUCT = "nvidia.com/gpu.product"


def population() -> dict[str, tuple[str, dict[str, Any]]]:
    """user -> (group, options): 34 students, 34 researchers, 32 staff."""
    users: dict[str, tuple[str, dict[str, Any]]] = {f"s{i:02d}": ("students", T4) for i in range(34)}
    for i in range(34):
        users[f"r{i:02d}"] = ("researchers", A100 if i < 12 else MIG if i < 22 else T4)
    users.update({f"f{i:02d}": ("staff", CPU) for i in range(32)})
    return users


WARM = ("warm", "staff", CPU)  # an untimed spawn per hub first: imports, watches, connections


def kind(group: str, options: dict[str, Any]) -> str:
    return f"{group}/{(options.get('gpu') or {}).get('type', 'cpu')}"


def write_catalog(path: Path) -> None:
    catalog = yaml.safe_load(DEMO_CATALOG.read_text())
    catalog["policies"]["groups"]["staff"] = {
        "environments": "*",
        "gpu_classes": [],
        "max_gpus": 0,
        "max_cpu": 4,
        "max_memory": "16Gi",
        "totals": {"max_gpus": 0, "max_cpu": 8, "max_memory": "32Gi"},
    }
    catalog["quotas"]["groups"]["researchers"] = {"max_gpus": RESEARCHERS_QUOTA}
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))


HUB_CONFIG = """\
import json
settings = json.loads({settings!r})
c.JupyterHub.bind_url = f"http://127.0.0.1:{{settings['port']}}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{{settings['hub_port']}}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{settings['proxy_port']}}"
c.ConfigurableHTTPProxy.command = settings["proxy"]
c.JupyterHub.db_url = "sqlite:///" + settings["state"] + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = settings["state"] + "/cookie_secret"
c.JupyterHub.concurrent_spawn_limit = settings["limit"]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = set(settings["groups_of"])
groups = {{}}
for user, group in settings["groups_of"].items():
    groups.setdefault(group, {{"users": []}})["users"].append(user)
c.JupyterHub.load_groups = groups
c.JupyterHub.services = [{{"name": "bench", "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "servers"]}}]
classes = {{"DCloudSpawner": "dcloud", "KubeSpawner": "kubespawner.KubeSpawner"}}
c.JupyterHub.spawner_class = classes[settings["section"]]
for name, value in settings["spawner"].items():
    setattr(getattr(c, settings["section"]), name, value)
per_user = settings["per_user"]
if per_user:  # plain KubeSpawner: the traits DCloud sets for this user's kind of request
    def set_traits(spawner):
        for name, value in per_user[spawner.user.name].items():
            setattr(spawner, name, value)
    c.KubeSpawner.pre_spawn_hook = set_traits
"""


def log(message: str) -> None:
    print(f"[concurrent {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_hub(
    name: str,
    state: Path,
    section: str,
    spawner: dict[str, Any],
    groups_of: dict[str, str],
    per_user: dict[str, dict[str, Any]],
    kubeconfig: str,
) -> Hub:
    state.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    settings = {
        "port": port,
        "hub_port": free_port(),
        "proxy_port": free_port(),
        "state": str(state),
        "proxy": [sys.executable, "-m", "dcloud_spawner.demo.proxy"],
        "token": token,
        "limit": SPAWN_LIMIT,
        "groups_of": groups_of,
        "section": section,
        "spawner": spawner,
        "per_user": per_user,
    }
    return launch(name, state, HUB_CONFIG.format(settings=json.dumps(settings)), kubeconfig, port, token)


# -- the plain KubeSpawner's traits, per kind of request ------------------------------------------


async def traits_for(catalog: Path, port: int, user: str, group: str, options: dict[str, Any]) -> dict[str, Any]:
    """KubeSpawner traits where DCloudSpawner, after taking ``options``, differs from a plain
    KubeSpawner; raises if a plain KubeSpawner given them would make another pod."""
    traits, manifest = await dcloud_traits(port, catalog, user, (group,), options)
    diff = differences(manifest, await plain_manifest(traits, user, (group,)))
    if diff:
        raise AssertionError(f"{kind(group, options)}: the two hubs would not make the same pod:\n" + "\n".join(diff))
    return traits


# -- one burst --------------------------------------------------------------------------------------


def pods_by_user(core: Any) -> dict[str, Any]:
    return {
        p.metadata.labels.get("hub.jupyter.org/username"): p
        for p in core.list_namespaced_pod(NAMESPACE, label_selector="component=singleuser-server").items
        if p.metadata.labels
    }


def failure_sentence(hub: Hub, user: str) -> str:
    request = urllib.request.Request(
        f"{hub.url}/hub/api/users/{user}/server/progress", headers={"Authorization": f"token {hub.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [json.loads(line[5:]) for line in response.read().decode().splitlines() if line.startswith("data:")]
    return str(events[-1].get("message", "")).removeprefix("Spawn failed: ") if events else "(no progress events)"


def burst(hub: Hub, core: Any, requests: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Fire every user's spawn at once; each request's outcome and when it ended."""
    gate = threading.Barrier(len(requests) + 1)
    sent: dict[str, float] = {}
    answered: dict[str, tuple[float, int, Any]] = {}

    def post(user: str) -> None:
        gate.wait()
        sent[user] = time.perf_counter()
        try:
            status, body = hub.api("POST", f"/users/{user}/server", copy.deepcopy(requests[user]))
        except OSError as error:
            status, body = 0, {"message": f"no answer: {error}"}
        answered[user] = (time.perf_counter(), status, body)

    threads = [threading.Thread(target=post, args=(u,), daemon=True) for u in requests]
    for thread in threads:
        thread.start()
    gate.wait()
    began = time.perf_counter()
    outcomes: dict[str, dict[str, Any]] = {}
    while len(outcomes) < len(requests) and time.perf_counter() - began < timeout:
        status, models = hub.api("GET", "/users?limit=200")
        servers = {m["name"]: (m.get("servers") or {}).get("") for m in models} if status == 200 else {}
        pods = pods_by_user(core)
        now = time.perf_counter()
        for user, (at, code, body) in list(answered.items()):
            if user in outcomes:
                continue
            if code not in (201, 202):
                message = body.get("message") if isinstance(body, dict) else body
                outcomes[user] = {"outcome": str(message), "status": code, "ended_s": at - began}
                continue
            server, pod = servers.get(user), pods.get(user)
            if server and server.get("ready") and pod and pod.status.phase == "Running" and pod.spec.node_name:
                outcomes[user] = {
                    "outcome": "Running",
                    "status": code,
                    "ended_s": now - began,
                    "node": pod.spec.node_name,
                }
            elif status == 200 and not server:  # the spawn failed: its progress says why
                outcomes[user] = {"outcome": failure_sentence(hub, user), "status": code, "ended_s": now - began}
        time.sleep(0.2)
    for user in requests:
        outcomes.setdefault(user, {"outcome": f"did not end within {timeout:.0f} s", "status": None, "ended_s": None})
    first = min(sent.values()) - began if sent else 0.0
    ends = [o["ended_s"] for o in outcomes.values() if o["ended_s"] is not None]
    return {"wall_s": (max(ends) - first) if ends else None, "outcomes": outcomes}


def stop_all(hub: Hub, core: Any, users: list[str], timeout: float = 120) -> None:
    threads = [threading.Thread(target=hub.api, args=("DELETE", f"/users/{u}/server"), daemon=True) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    deadline = time.monotonic() + timeout
    while pods_by_user(core):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{hub.name}: servers' pods still there after {timeout:.0f} s")
        time.sleep(0.5)


# -- checks from the API server -------------------------------------------------------------------


def gpu_class(pod: Any, nodes: dict[str, Any]) -> tuple[str, int] | None:
    limits: dict[str, str] = {}
    for container in pod.spec.containers:
        limits.update((container.resources and container.resources.limits) or {})
    for resource in GPU_RESOURCES:
        if int(limits.get(resource, 0)):
            product = nodes[pod.spec.node_name].metadata.labels.get(PRODUCT, "?") if pod.spec.node_name else "?"
            label = resource if resource != "nvidia.com/gpu" else product
            return label, int(limits[resource])
    return None


def capacity(nodes: dict[str, Any]) -> Counter[str]:
    total: Counter[str] = Counter()
    for node in nodes.values():
        allocatable = node.status.allocatable or {}
        if int(allocatable.get("nvidia.com/gpu", 0)):
            total[node.metadata.labels.get(PRODUCT, "?")] += int(allocatable["nvidia.com/gpu"])
        if int(allocatable.get("nvidia.com/mig-1g.10gb", 0)):
            total["nvidia.com/mig-1g.10gb"] += int(allocatable["nvidia.com/mig-1g.10gb"])
    return total


def make_room(core: Any, requests: dict[str, dict[str, Any]]) -> list[str]:
    """Add KWOK copies of the fleet's GPU nodes until every request's GPUs fit at once (for
    plain KubeSpawner, which knows no quota); return the new nodes' names."""
    nodes = {n.metadata.name: n for n in core.list_node().items}
    have = capacity(nodes)
    asked: Counter[str] = Counter()
    template: dict[str, Any] = {}
    for node in nodes.values():
        allocatable = node.status.allocatable or {}
        for resource in GPU_RESOURCES:
            if int(allocatable.get(resource, 0)):
                label = node.metadata.labels.get(PRODUCT, "?") if resource == "nvidia.com/gpu" else resource
                template.setdefault(label, node)
    by_type = {"a100": "NVIDIA-A100-SXM4-80GB", "t4": "Tesla-T4", "a100-mig-1g": "nvidia.com/mig-1g.10gb"}
    for options in requests.values():
        gpu = options.get("gpu")
        if gpu:
            asked[by_type[gpu["type"]]] += int(gpu["count"])
    added: list[str] = []
    for label, count in asked.items():
        node = template[label]
        per_node = max(int(v) for k, v in (node.status.allocatable or {}).items() if k in GPU_RESOURCES)
        for index in range(-(-max(0, count - have[label]) // per_node)):
            name = f"{node.metadata.name}-room-{index}"
            labels = {**node.metadata.labels, "kubernetes.io/hostname": name}
            core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": labels, "annotations": node.metadata.annotations},
                    "spec": {"providerID": f"kwok://{name}", "taints": [t.to_dict() for t in node.spec.taints or []]},
                    "status": {"capacity": node.status.capacity, "allocatable": node.status.allocatable},
                }
            )
            added.append(name)
    deadline = time.monotonic() + 60
    while any(not _ready(core.read_node(name)) for name in added):
        if time.monotonic() > deadline:
            raise RuntimeError(f"KWOK did not make {added} Ready in 60 s")
        time.sleep(0.5)
    return added


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def shape(pod: Any) -> dict[str, Any]:
    """What the pod asks of the cluster, to compare the two hubs' pods."""
    return {
        "containers": [
            {"image": c.image, "resources": (c.resources.to_dict() if c.resources else None)}
            for c in pod.spec.containers
        ],
        "node_selector": pod.spec.node_selector,
        "tolerations": sorted(json.dumps(t.to_dict(), sort_keys=True) for t in pod.spec.tolerations or []),
    }


def check(core: Any, groups_of: dict[str, str], result: dict[str, Any]) -> dict[str, Any]:
    nodes = {n.metadata.name: n for n in core.list_node().items}
    time.sleep(5)  # a refused spawn that got as far as a pod has had time to delete it
    pods = pods_by_user(core)
    held: Counter[str] = Counter()
    per_group: Counter[str] = Counter()
    for user, pod in pods.items():
        gpu = gpu_class(pod, nodes)
        if gpu:
            held[gpu[0]] += gpu[1]
            per_group[groups_of.get(user, "?")] += gpu[1]
    fleet = capacity(nodes)
    running = {u for u, o in result["outcomes"].items() if o["outcome"] == "Running"}
    not_running = sorted(u for u, p in pods.items() if p.status.phase != "Running")
    checks = {
        "gpus_held": dict(held),
        "gpus_in_fleet": dict(fleet),
        "gpus_within_fleet": all(held[k] <= fleet[k] for k in held),
        "gpus_per_group": dict(per_group),
        "students_quota_held": per_group["students"] <= 4,
        "researchers_quota_held": per_group["researchers"] <= RESEARCHERS_QUOTA,
        "pods_not_running": not_running,
        "pods_are_the_running_outcomes": set(pods) == running,
        "every_request_ended": all(o["ended_s"] is not None for o in result["outcomes"].values()),
    }
    checks["ok"] = (
        all(
            checks[k]
            for k in (
                "gpus_within_fleet",
                "students_quota_held",
                "researchers_quota_held",
                "pods_are_the_running_outcomes",
            )
        )
        and checks["every_request_ended"]
        and not not_running
    )
    return checks


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.concurrent_spawns",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("DCLOUD_CLUSTER_DIR") or CACHE / "bench-concurrent")
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds each burst may take")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)

    from kubernetes import client
    from kubernetes import config as kube_config

    users = population()
    groups_of = {u: g for u, (g, _) in users.items()} | {WARM[0]: WARM[1]}
    options_of = {u: o for u, (_, o) in users.items()} | {WARM[0]: WARM[2]}
    timeouts = {"start_timeout": 120, "http_timeout": 60}
    hubs: list[Hub] = []
    report: dict[str, Any] = {"machine_before": machine(), "concurrent_spawn_limit": SPAWN_LIMIT}
    admin = cluster_command(args.run_dir, "up", "--no-build")
    server, port = stand_in_server()
    state = Path(tempfile.mkdtemp(prefix="dcloud-concurrent-bench-"))
    failed = True
    try:
        hub_kubeconfig = str(Path(admin).with_name("hub.kubeconfig"))
        catalog = state / "catalog.yaml"
        write_catalog(catalog)
        asyncio.run(point_kubespawner_at(hub_kubeconfig))
        kinds = {kind(g, o): (u, g, o) for u, (g, o) in {**users, WARM[0]: WARM[1:]}.items()}
        traits = {k: asyncio.run(traits_for(catalog, port, *who)) for k, who in kinds.items()}
        log(f"{len(kinds)} kinds of request; plain KubeSpawner's pod equals DCloud's for each")
        core = client.CoreV1Api(kube_config.new_client_from_config(config_file=admin))

        dcloud_config = {"namespace": NAMESPACE, "port": port, "catalog_path": str(catalog), **timeouts}
        hub = start_hub("dcloud", state / "dcloud", "DCloudSpawner", dcloud_config, groups_of, {}, hub_kubeconfig)
        hubs.append(hub)
        burst(hub, core, {WARM[0]: WARM[2]}, args.timeout)
        stop_all(hub, core, [WARM[0]])
        log("DCloud: 100 spawns at once")
        ours = burst(hub, core, {u: o for u, (_, o) in users.items()}, args.timeout)
        ours["checks"] = check(core, groups_of, ours)
        granted = sorted(u for u, o in ours["outcomes"].items() if o["outcome"] == "Running")
        shapes = {u: shape(p) for u, p in pods_by_user(core).items()}
        log(f"DCloud: {len(granted)} Running in {ours['wall_s']:.2f} s; checks ok: {ours['checks']['ok']}")
        stop_all(hub, core, granted)
        hub.stop()

        per_user = {u: traits[kind(groups_of[u], options_of[u])] for u in groups_of}
        plain = start_hub(
            "kubespawner", state / "kubespawner", "KubeSpawner", {**timeouts}, groups_of, per_user, hub_kubeconfig
        )
        hubs.append(plain)
        burst(plain, core, {WARM[0]: WARM[2]}, args.timeout)
        stop_all(plain, core, [WARM[0]])
        log(f"KubeSpawner: the {len(granted)} granted servers at once")
        theirs = burst(plain, core, {u: options_of[u] for u in granted}, args.timeout)
        theirs["checks"] = check(core, groups_of, theirs)
        theirs["same_pods_as_dcloud"] = {u: shape(p) for u, p in pods_by_user(core).items()} == shapes
        stop_all(plain, core, granted)

        room = make_room(core, {u: o for u, (_, o) in users.items()})
        log(f"KubeSpawner: all {len(users)} servers at once ({len(room)} nodes added so that all fit)")
        try:
            every = burst(plain, core, {u: o for u, (_, o) in users.items()}, args.timeout)
            pods = pods_by_user(core)
            by_kind_shape = {kind(groups_of[u], options_of[u]): s for u, s in shapes.items()}
            every["checks"] = {
                "running": sum(o["outcome"] == "Running" for o in every["outcomes"].values()),
                "pods_not_running": sorted(u for u, p in pods.items() if p.status.phase != "Running"),
                "same_pods_as_dcloud_per_kind": all(
                    shape(p) == by_kind_shape[kind(groups_of[u], options_of[u])] for u, p in pods.items()
                ),
            }
            held = every["checks"]
            held["ok"] = (
                held["running"] == len(users) and not held["pods_not_running"] and held["same_pods_as_dcloud_per_kind"]
            )
            stop_all(plain, core, list(users))
        finally:
            for name in room:
                core.delete_node(name)
        failed = False
    finally:
        for hub in hubs:
            hub.stop()
        server.shutdown()
        if not args.keep:
            cluster_command(args.run_dir, "down")
    if not failed:
        shutil.rmtree(state, ignore_errors=True)  # kept after a failure: the hubs' logs are there

    outcomes = Counter(
        o["outcome"] if o["outcome"] == "Running" else o["outcome"][:60] for o in ours["outcomes"].values()
    )
    by_kind: dict[str, Counter[str]] = {}
    for user, o in ours["outcomes"].items():
        by_kind.setdefault(kind(*users[user]), Counter())["Running" if o["outcome"] == "Running" else "refused"] += 1
    ratio = ours["wall_s"] / theirs["wall_s"] if theirs["wall_s"] else None
    ratio_all = ours["wall_s"] / every["wall_s"] if every["wall_s"] else None
    for result in (ours, theirs, every):  # seconds from the burst's start to each server Running
        ready = [o["ended_s"] for o in result["outcomes"].values() if o["outcome"] == "Running"]
        result["running_median_s"] = statistics.median(ready) if ready else None
        result["running_p95_s"] = percentile(ready, 0.95) if ready else None
    report.update(
        {
            "machine_after": machine(),
            "requests": len(users),
            "running": len(granted),
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "outcomes": dict(outcomes),
            "dcloud": ours,
            "kubespawner": theirs,
            "kubespawner_all": every,
            "ratio_of_wall_times": ratio,
            "ratio_to_all_100": ratio_all,
        }
    )
    print("| hub | requests | Running | wall s (first request to last outcome) | DCloud / this |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| DCloudSpawner | {len(users)} | {len(granted)} | {ours['wall_s']:.2f} | — |")
    print(
        f"| KubeSpawner, the granted pods | {len(granted)} | "
        f"{sum(o['outcome'] == 'Running' for o in theirs['outcomes'].values())} | {theirs['wall_s']:.2f} "
        f"| {ratio:.2f}x |"
    )
    print(
        f"| KubeSpawner, all 100 pods (fleet grown) | {len(users)} | {every['checks']['running']} "
        f"| {every['wall_s']:.2f} | {ratio_all:.2f}x |"
    )
    for name, result in (("DCloud", ours), ("KubeSpawner (granted)", theirs), ("KubeSpawner (all)", every)):
        print(f"{name}: to Running median {result['running_median_s']:.2f} s, p95 {result['running_p95_s']:.2f} s")
    for text, count in outcomes.most_common():
        print(f"{count:4d}  {text}")
    print(json.dumps({k: ours["checks"][k] for k in ours["checks"]}, indent=1))
    print("baseline checks ok:", theirs["checks"]["ok"], "same pods as DCloud:", theirs["same_pods_as_dcloud"])
    print("all-100 baseline checks:", json.dumps(every["checks"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if ours["checks"]["ok"] and theirs["checks"]["ok"] and every["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
