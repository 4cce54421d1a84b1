"""The hub at cluster scale: memory, event-loop stalls and renders after a change, with
500 nodes / 5,000 pods and 5,000 nodes / 50,000 pods, against KubeSpawner in the same run.

    .venv/bin/python -m benchmarks.scale [--scales 1,10] [--renders 100] [--json out.json] [--keep]

Starts (or reuses) a local control plane with ``tests.cluster`` in its own run dir (a command:
benchmarks import nothing from ``tests/``), then for each scale S (ascending) grows the fleet to
S x 500 KWOK nodes and S x 5,000 pods bound with ``spec.nodeName`` (``plan_scaled_fleet``: a
node's GPUs in use are seeded by its name, so the free counts are known and a smaller fleet
is part of a larger one), waits until every node is Ready, and runs two fresh hub processes
(``benchmarks.hub_probe``): DCloud's watches (memory, stalls while listing, re-listing and
taking two bursts of 1,000 pod changes this script makes, renders right after a change
against KubeSpawner's static form, availability checked after every phase) and KubeSpawner's
own per-namespace pod reflector over the same pods. Reports what the API server and etcd
used. Stops the cluster at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import simulated_fleet as sim
from benchmarks.form_render import cluster_command, machine
from benchmarks.hub_probe import BURST

CACHE = Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s"))


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- what the control plane uses -----------------------------------------------------------------


@dataclass
class Usage:
    """One component's resident memory (now and peak) and CPU seconds since it started."""

    rss_mib: float
    peak_rss_mib: float
    cpu_s: float


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Usage(int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024, cpu)


def control_plane(run_dir: Path) -> dict[str, Any]:
    """API server, etcd (and the rest) now, from the harness's ``state.json``; etcd's data size."""
    state = json.loads((run_dir / "state.json").read_text())
    result: dict[str, Any] = {}
    for name, info in state["processes"].items():
        try:
            result[name] = asdict(usage(int(info["pid"])))
        except (OSError, KeyError, ValueError):
            continue
    data = run_dir / "etcd-data"
    result["etcd_data_mib"] = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20
    return result


# -- the fleet -------------------------------------------------------------------------------------


def count_ready(core: Any) -> tuple[int, int]:
    """(Ready benchmark nodes, benchmark pods not Running yet)."""
    nodes = 0
    token = None
    while True:
        page = json.loads(
            core.list_node(
                label_selector=f"{sim.BENCH_LABEL}=node", limit=1000, _continue=token, _preload_content=False
            ).data
        )
        nodes += sum(map(sim._node_ready, page["items"]))
        token = page["metadata"].get("continue")
        if not token:
            break
    waiting = json.loads(
        core.list_namespaced_pod(
            sim.NAMESPACE, field_selector="status.phase!=Running", limit=1, _preload_content=False
        ).data
    )
    pending = len(waiting["items"]) + int(waiting["metadata"].get("remainingItemCount") or 0)
    return nodes, pending


def grow(core: Any, plan: sim.FleetPlan, workers: int, settle_pods_s: float) -> dict[str, Any]:
    """Create what the fleet lacks; wait for every node Ready (and, for a while, pods Running)."""
    timings: dict[str, Any] = {}
    began = time.perf_counter()
    pods_there = pod_names(core)  # a kept cluster: create only what it lacks
    sim.create_nodes(core, plan.nodes, workers)
    timings["nodes_s"] = time.perf_counter() - began
    log(f"{len(plan.nodes)} nodes in {timings['nodes_s']:.0f}s; creating {len(plan.pods)} pods")
    began = time.perf_counter()
    sim.create_pods(core, [p for p in plan.pods if p.name not in pods_there], workers)
    timings["pods_s"] = time.perf_counter() - began
    log(f"{len(plan.pods)} pods in {timings['pods_s']:.0f}s; waiting for the nodes to be Ready")
    began = time.perf_counter()
    while (ready := count_ready(core))[0] < len(plan.nodes):
        if time.perf_counter() - began > 900:
            raise TimeoutError(f"only {ready[0]} of {len(plan.nodes)} nodes Ready after 900s")
        time.sleep(5)
    timings["nodes_ready_s"] = time.perf_counter() - began
    while ready[1] and time.perf_counter() - began < settle_pods_s:
        time.sleep(5)
        ready = count_ready(core)
    timings["settle_s"] = time.perf_counter() - began
    timings["pods_not_running_at_start"] = ready[1]
    log(f"nodes Ready after {timings['nodes_ready_s']:.0f}s; {ready[1]} pods not Running yet (KWOK catches up)")
    return timings


def renamed(pods: list[sim.PodPlan]) -> list[sim.PodPlan]:
    return [dataclasses.replace(p, name=f"{p.name}-b") for p in pods]


def pod_names(core: Any) -> set[str]:
    names: set[str] = set()
    token = None
    while True:
        page = json.loads(
            core.list_namespaced_pod(sim.NAMESPACE, limit=5000, _continue=token, _preload_content=False).data
        )
        names |= {p["metadata"]["name"] for p in page["items"]}
        token = page["metadata"].get("continue")
        if not token:
            return names


def restore(core: Any, plan: sim.FleetPlan, workers: int) -> None:
    """Put the fleet back as planned: pods re-created under new names go, the originals return."""
    names = pod_names(core)
    planned = {p.name for p in plan.pods}
    extra = [sim.PodPlan(name, "", None, 0) for name in names - planned]
    sim.delete_pods(core, extra, workers)
    wait_gone(core, len(names) - len(extra))
    time.sleep(10)  # let KWOK finish with the deleted names before they are used again
    sim.create_pods(core, [p for p in plan.pods if p.name not in names], workers)


def wait_gone(core: Any, left: int, timeout: float = 300) -> None:
    """Until the benchmark namespace holds exactly ``left`` pods."""
    deadline = time.monotonic() + timeout
    while True:
        page = json.loads(core.list_namespaced_pod(sim.NAMESPACE, limit=1, _preload_content=False).data)
        count = len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)
        if count == left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} pods left, not {left}")
        time.sleep(0.5)


# -- the hub processes -----------------------------------------------------------------------------


def probe(
    mode: str, args: argparse.Namespace, scale: int, hub: str, admin: str, core: Any, plan: sim.FleetPlan
) -> dict[str, Any]:
    """Run ``benchmarks.hub_probe`` and make the bursts it asks for; return its result."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.hub_probe",
        mode,
        "--kubeconfig",
        hub,
        "--admin-kubeconfig",
        admin,
        "--scale",
        str(scale),
        "--seed",
        str(args.seed),
        "--renders",
        str(args.renders),
        *(["--python-gc"] if args.python_gc and mode == "dcloud" else []),
    ]
    burst = random.Random(args.seed).sample(plan.pods, BURST)
    nice = args.hub_nice

    def priority() -> None:  # in the child (a session of its own), before it runs Python
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        # with autogroup scheduling the CPU is shared between sessions first (each cluster
        # component runs in its own): the session's weight is what wins the hub a CPU
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():
            autogroup.write_text(str(nice))

    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=bool(nice),
        preexec_fn=priority if nice else None,
    )
    assert child.stdin is not None and child.stdout is not None
    result = None
    try:
        for line in child.stdout:
            if line.startswith("BURST "):
                began = time.perf_counter()
                if line.split()[1] == "delete":
                    sim.delete_pods(core, burst, args.workers)
                    wait_gone(core, len(plan.pods) - len(burst))  # KWOK ends the pods' graceful deletion
                else:  # under new names: KWOK may still act on the deleted pods' names
                    sim.create_pods(core, renamed(burst), args.workers, strict=True)
                log(f"burst {line.split()[1]}: {BURST} pods in {time.perf_counter() - began:.1f}s")
                child.stdin.write("done\n")
                child.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
    finally:  # in a session of its own (--hub-nice) a Ctrl-C here would not reach it
        if child.poll() is None and result is None:
            child.kill()
    if child.wait() != 0 or result is None:
        raise RuntimeError(f"hub_probe {mode} failed ({child.returncode})")
    return result


# -- report ------------------------------------------------------------------------------------------


def report(scales: list[dict[str, Any]]) -> str:
    lines = [
        "| fleet | hub memory / 1,000 pods | / 1,000 nodes | KubeSpawner reflector / 1,000 pods "
        "| longest loop stall (of it running): list nodes, pods, re-list, 2 bursts | KubeSpawner reflector's "
        "| render after a change, median / p95 ms (ratio to static form) | API requests / render |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for s in scales:
        d, k = s["dcloud"], s["kubespawner"]
        stalls = ", ".join(f"{p['max_stall_ms']:.0f} ({p['max_cpu_stall_ms']:.0f})" for p in d["phases"][:5])
        r = d["renders"]
        lines.append(
            f"| {d['nodes']:,} nodes, {d['pods']:,} pods | {d['per_1000_pods_mib']:.2f} MiB "
            f"| {d['per_1000_nodes_mib']:.2f} MiB | {k['per_1000_pods_mib']:.2f} MiB | {stalls} ms "
            f"| {max(p['max_stall_ms'] for p in k['phases']):.0f} "
            f"({max(p['max_cpu_stall_ms'] for p in k['phases']):.0f}) ms, {k['full_lists']} lists "
            f"| {r['dcloud']['median_ms']:.2f} / {r['dcloud']['p95_ms']:.2f} vs "
            f"{r['kubespawner-static']['median_ms']:.2f} / {r['kubespawner-static']['p95_ms']:.2f} "
            f"({r['ratio']['median']:.2f}x, {r['ratio']['p95']:.2f}x) "
            f"| {r['api_requests_per_render']['dcloud']:g} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", default="1,10", help="fleets of S x 500 nodes, 10 pods each (default 1,10)")
    parser.add_argument("--renders", type=int, default=100, help="pod changes (x2) with a render after each")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get("DCLOUD_CLUSTER_DIR") or CACHE / "bench-scale"),
        help="the cluster's run dir (default $DCLOUD_CLUSTER_DIR, else ~/.cache/dcloud-k8s/bench-scale)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster and its fleet running")
    parser.add_argument(
        "--hub-nice",
        type=int,
        default=0,
        help="scheduling priority (nice) of the hub processes, both DCloud's and KubeSpawner's, each run "
        "in a session of its own with that autogroup nice too: below 0 (root only) they win the CPU from "
        "the simulated cluster on the same machine, as a hub with a CPU of its own would (default 0: "
        "they share the CPUs with it as equals)",
    )
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="DCloud's watches leave the hub's garbage collector as Python has it (the hub's default); "
        "without it they run with LeanReflector.tune_garbage_collection, as the README's figures were measured",
    )
    parser.add_argument("--workers", type=int, default=16, help="threads creating nodes and pods (default 16)")
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument(
        "--settle-pods",
        type=float,
        default=120.0,
        help="seconds to wait (at most) for KWOK to mark the pods Running (default 120)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scales = sorted(int(s) for s in args.scales.split(","))
    results: dict[str, Any] = {
        "machine": machine(),
        "hub_nice": args.hub_nice,
        "tune_garbage_collection": not args.python_gc,
        "scales": [],
    }
    try:
        began = time.perf_counter()
        admin = cluster_command(args.run_dir, "up", "--no-build")
        results["cluster_up_s"] = time.perf_counter() - began
        hub = str(Path(admin).with_name("hub.kubeconfig"))
        core = sim.admin_core(admin, args.workers)
        sim.remove_other_nodes(core)
        sim.ensure_namespace(core)
        results["control_plane_empty"] = control_plane(args.run_dir)
        for scale in scales:
            plan = sim.plan_scaled_fleet(scale, args.seed)
            log(f"scale {scale}: {len(plan.nodes)} nodes, {len(plan.pods)} pods; load {os.getloadavg()}")
            entry: dict[str, Any] = {"scale": scale, "setup": grow(core, plan, args.workers, args.settle_pods)}
            entry["control_plane_after_setup"] = control_plane(args.run_dir)
            entry["load_before"] = os.getloadavg()
            entry["dcloud"] = probe("dcloud", args, scale, hub, admin, core, plan)
            entry["kubespawner"] = probe("kubespawner", args, scale, hub, admin, core, plan)
            restore(core, plan, args.workers)
            entry["control_plane_after"] = control_plane(args.run_dir)
            entry["load_after"] = os.getloadavg()
            results["scales"].append(entry)
            print(report(results["scales"]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            cluster_command(args.run_dir, "down")
    print(report(results["scales"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
