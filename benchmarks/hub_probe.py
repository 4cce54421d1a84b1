"""The hub's side of ``benchmarks.scale``: one process that holds the watches, as a hub does.

    python -m benchmarks.hub_probe dcloud|kubespawner --kubeconfig HUB --admin-kubeconfig ADMIN --scale N

Run by ``benchmarks.scale`` in a fresh process per measurement, so that its resident memory
is the watches' and nothing else's. It measures, with a task that asks to wake every
millisecond (its lateness is how long the event loop was held):

- ``dcloud``: DCloud's watches (``dcloud_spawner/kube/watch.py``): resident memory before and
  after listing the Nodes, then the Pods; the loop's longest stall while they list, re-list,
  and take two bursts of pod changes made by the parent (it prints ``BURST <name>`` and waits
  for a line on stdin); after each phase, that the free counts equal the seeded fleet's and
  a count from a fresh full list; then form renders right after a pod change (DCloud's form,
  and KubeSpawner's static profile form as the baseline, interleaved), with API requests per
  render.
- ``kubespawner``: KubeSpawner's own per-namespace pod reflector over the same pods (whole
  objects, a full list again whenever a watch ends): resident memory and the loop's stalls.

Prints progress on stderr and one ``RESULT {json}`` line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import gc
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.config import new_client_from_config
from kubespawner import KubeSpawner, clients
from kubespawner.clients import shared_client
from kubespawner.spawner import PodReflector

from benchmarks import simulated_fleet as sim
from benchmarks.form_render import (
    RequestCounter,
    Variant,
    dcloud_spawner,
    kubespawner,
    percentile,
    point_kubespawner_at,
    render,
    static_profiles,
)
from dcloud_spawner.core.availability import GpuAvailability, LiveAvailability
from dcloud_spawner.core.catalog import Catalog
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.state import close_hub_state, hub_state
from dcloud_spawner.kube.facts import compute
from dcloud_spawner.kube.watch import ClusterPodReflector, ClusterWatch, NodeReflector, freeze_long_lived

BURST = 1000


def log(message: str) -> None:
    print(f"[hub_probe {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def resident_mib() -> float:
    """Resident memory after a full collection, with freed heap handed back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def deep_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it refers to (shared objects counted once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_bytes(item, seen) for item in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_bytes(getattr(obj, name), seen) for name in obj.__slots__ if hasattr(obj, name))
    return size


# -- the loop's lateness ------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    max_stall_ms: float = 0.0  # wall clock: includes waiting for a CPU on a busy machine
    p99_stall_ms: float = 0.0
    max_cpu_stall_ms: float = 0.0  # what the loop itself ran between two ticks (thread CPU time)
    max_gc_ms: float = 0.0  # longest garbage collection (it walks every object of the process)
    full_gcs: int = 0
    ticks: int = 0
    note: str = ""
    # the phase's slowest tick (by the thread's CPU time): how many collections ran within it,
    # the five longest as (generation, wall ms, CPU ms), and the CPU the rest of that tick took
    slowest_tick_gc_count: int = 0
    slowest_tick_gcs: list[tuple[int, float, float]] = field(default_factory=list)
    slowest_tick_other_cpu_ms: float = 0.0


@dataclass
class LoopLag:
    """A task that sleeps 1 ms at a time; how late it wakes is how long the loop was held."""

    phases: list[Phase] = field(default_factory=list)
    _lags: list[float] = field(default_factory=list)
    _cpu: list[float] = field(default_factory=list)
    _ticks: list[tuple[float, float]] = field(default_factory=list)  # (began, ended), perf_counter
    _gcs: list[tuple[int, float, float, float]] = field(default_factory=list)  # (generation, ended, wall, CPU)
    _gc_began: tuple[float, float] = (0.0, 0.0)
    _task: asyncio.Task | None = None
    _began: float = 0.0
    _asleep: tuple[float, float] | None = None  # the tick now waiting to wake: (wall, thread CPU) it began

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_began = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._gc_began
            now = time.perf_counter()
            self._gcs.append((info["generation"], now, now - wall, time.thread_time() - cpu))

    async def _tick(self) -> None:
        while True:
            self._asleep = (time.perf_counter(), time.thread_time())
            await asyncio.sleep(0.001)
            (before, cpu), self._asleep = self._asleep, None  # begin() and end() may have moved it
            if before >= self._began:  # a tick begun before the phase belongs to the one before
                self._record(before, cpu)

    def _record(self, before: float, cpu: float) -> None:
        now = time.perf_counter()
        self._lags.append(max(0.0, now - before - 0.001))
        self._cpu.append(time.thread_time() - cpu)
        self._ticks.append((before, now))

    def begin(self) -> None:
        self._lags, self._cpu, self._gcs, self._ticks = [], [], [], []
        self._began = time.perf_counter()
        if self._asleep is not None:  # the tick asleep now counts from here, for this phase
            self._asleep = (self._began, time.thread_time())

    def end(self, name: str, note: str = "") -> Phase:
        # the tick asleep now has waited through whatever ran last (a phase often ends right
        # after a long stretch, before that tick wakes): it counts, late by as much as it is now
        if self._asleep is not None and self._asleep[0] >= self._began:
            self._record(*self._asleep)
            self._asleep = (time.perf_counter(), time.thread_time())  # the rest of it is the next phase's
        lags = sorted(self._lags) or [0.0]
        slowest_gcs: list[tuple[int, float, float]] = []
        other_cpu = 0.0
        if self._cpu:
            worst = max(range(len(self._cpu)), key=self._cpu.__getitem__)
            began, ended = self._ticks[worst]
            slowest_gcs = [
                (g, round(wall * 1000, 2), round(cpu * 1000, 2))
                for g, at, wall, cpu in self._gcs
                if began <= at <= ended
            ]
            other_cpu = self._cpu[worst] * 1000 - sum(cpu for _, _, cpu in slowest_gcs)
        gc_count = len(slowest_gcs)
        slowest_gcs = sorted(slowest_gcs, key=lambda g: g[2], reverse=True)[:5]
        phase = Phase(
            name,
            seconds=round(time.perf_counter() - self._began, 3),
            max_stall_ms=round(lags[-1] * 1000, 2),
            p99_stall_ms=round(percentile(lags, 0.99) * 1000, 2),
            max_cpu_stall_ms=round(max(self._cpu, default=0.0) * 1000, 2),
            max_gc_ms=round(max((t for _, _, t, _ in self._gcs), default=0.0) * 1000, 2),
            full_gcs=sum(1 for g, *_ in self._gcs if g == 2),
            ticks=len(self._lags),
            note=note,
            slowest_tick_gc_count=gc_count,
            slowest_tick_gcs=slowest_gcs,
            slowest_tick_other_cpu_ms=round(other_cpu, 2),
        )
        self.phases.append(phase)
        log(
            f"{name}: {phase.seconds:.1f}s, longest stall {phase.max_stall_ms:.1f} ms, "
            f"{phase.max_cpu_stall_ms:.1f} ms of it running, longest GC {phase.max_gc_ms:.1f} ms "
            f"({phase.full_gcs} full; {note}; load {os.getloadavg()[0]:.1f}); slowest tick: {gc_count} collections, "
            f"longest {slowest_gcs} (generation, wall ms, CPU ms), {other_cpu:.1f} ms of CPU besides"
        )
        return phase

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)


# -- the fleet's truth --------------------------------------------------------------------------


def wanted(expected: Mapping[str, sim.Availability]) -> dict[str, GpuAvailability]:
    return {k: GpuAvailability(v.free, v.total, v.largest_free_block) for k, v in expected.items()}


async def fresh_count(kubeconfig: str) -> tuple[dict[str, GpuAvailability], list[str]]:
    """Availability from a fresh full list, counted from scratch by ``compute`` in a process
    of its own (whole objects would leave this process's heap larger than the watches do)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.hub_probe",
        "count",
        "--admin-kubeconfig",
        kubeconfig,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError("counting from a fresh list failed")
    counted = json.loads(out)
    return {k: GpuAvailability(**v) for k, v in counted["availability"].items()}, counted["down"]


async def count_from_scratch(kubeconfig: str) -> dict[str, Any]:
    api = CoreV1Api(await new_client_from_config(config_file=kubeconfig))

    async def everything(method: Any, pods: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        items, token = [], None
        while True:
            # from the API server's watch cache (resourceVersion 0): etcd is spared a 50,000-pod read
            response = await method(limit=5000, _continue=token, resource_version="0", _preload_content=False, **kwargs)
            page = json.loads(await response.read())
            if pods:  # what compute reads of a pod (its spec and phase): the rest would only fill memory
                page["items"] = [
                    {"spec": o["spec"], "status": {"phase": o["status"].get("phase")}} for o in page["items"]
                ]
            items += page["items"]
            token = page["metadata"].get("continue")
            if not token:
                return items

    nodes = await everything(api.list_node)
    unfinished = "status.phase!=Succeeded,status.phase!=Failed"
    pods = await everything(api.list_pod_for_all_namespaces, pods=True, field_selector=unfinished)
    await api.api_client.close()
    # nodes the cluster itself has taken out (KWOK's heartbeats late on a busy machine)
    down = [
        n["metadata"]["name"] for n in nodes if not sim._node_ready(n) or (n.get("spec") or {}).get("unschedulable")
    ]
    availability = compute(Catalog.from_path(DEMO_CATALOG), nodes, pods)
    return {"availability": {k: asdict(v) for k, v in availability.items()}, "down": down}


async def converge(live: LiveAvailability, catalog: Catalog, want: dict[str, GpuAvailability], timeout: float) -> float:
    began = time.perf_counter()
    while (seen := live.availability(catalog)) != want:
        if time.perf_counter() - began > timeout:
            raise AssertionError(f"the watches show {seen}, the fleet has {want}")
        await asyncio.sleep(0.01)
    return time.perf_counter() - began


async def pods_seen(live: LiveAvailability, count: int, timeout: float = 600) -> None:
    """Until the watch holds ``count`` pods (the burst has reached it)."""
    began = time.perf_counter()
    while len(live.pods) != count:
        if time.perf_counter() - began > timeout:
            raise AssertionError(f"the watch holds {len(live.pods)} pods, not {count}")
        await asyncio.sleep(0.01)


@dataclass
class Checked:
    phase: str
    availability: dict[str, Any]
    equals_seeded: bool
    equals_fresh_list: bool
    nodes_out: list[str]


async def check(
    phase: str, live: LiveAvailability, catalog: Catalog, plan: sim.FleetPlan, removed: list[sim.PodPlan], admin: str
) -> Checked:
    """The watches' counts equal the seeded fleet's (less any node the cluster has taken out
    meanwhile) and those counted from scratch from a fresh full list."""
    for _ in range(8):
        try:
            await converge(live, catalog, wanted(plan.expected_without(removed)), 60)
        except AssertionError:
            pass  # a node may be out: the fresh list says which
        fresh, down = await fresh_count(admin)
        want = wanted(plan.expected_without(removed, down))
        try:  # the watches reach what the list saw (unless a node came and went again meanwhile)
            await converge(live, catalog, fresh, 20)
        except AssertionError:
            pass
        seen = live.availability(catalog)
        if seen == want == fresh:
            log(
                f"after {phase}: availability equals the seeded fleet's and a fresh full list's ({len(down)} nodes out)"
            )
            return Checked(phase, {k: asdict(v) for k, v in seen.items()}, True, True, down)
        log(f"after {phase}: watches {seen}, seeded {want}, fresh list {fresh}; {len(down)} nodes out; again")
    raise AssertionError(f"after {phase}: the watches never agreed with the seeded fleet and a fresh list")


async def parent_burst(name: str) -> None:
    """Ask the parent to change the cluster, and wait (loop running) until it says it did."""
    print(f"BURST {name}", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "done":
        raise RuntimeError(f"the parent answered {line!r}")


# -- DCloud --------------------------------------------------------------------------------------


async def probe_dcloud(args: argparse.Namespace) -> dict[str, Any]:
    plan = sim.plan_scaled_fleet(args.scale, args.seed)
    burst = random.Random(args.seed).sample(plan.pods, BURST)
    catalog = Catalog.from_path(DEMO_CATALOG)
    counter = RequestCounter()
    counter.install()
    await point_kubespawner_at(args.kubeconfig)
    admin = CoreV1Api(await new_client_from_config(config_file=args.admin_kubeconfig))
    static, _ = static_profiles(catalog)
    variants = [
        Variant("dcloud", "DCloud (watch caches)", dcloud_spawner),
        Variant("kubespawner-static", "KubeSpawner, static profile_list", lambda: kubespawner(static)),
    ]
    for variant in variants:  # imports and templates loaded before the baseline memory
        await render(variant)
    await close_hub_state()
    memory: dict[str, float] = {"baseline_mib": resident_mib()}
    lag = LoopLag()
    lag.start()

    api = shared_client("CoreV1Api")
    live = LiveAvailability()
    # the figures in benchmarks/README.md were measured with the collector tuned (an opt-in since)
    tuned = not args.python_gc
    nodes = NodeReflector(live, api, tune_garbage_collection=tuned)
    pods = ClusterPodReflector(live, api, tune_garbage_collection=tuned)
    lag.begin()
    await nodes.start()
    lag.end("list nodes", f"{len(live.nodes)} nodes")
    memory["after_nodes_mib"] = resident_mib()
    lag.begin()
    await pods.start()
    lag.end("list pods", f"{len(live.pods)} pods")
    memory["after_pods_mib"] = resident_mib()
    if pods.tune_garbage_collection:
        freeze_long_lived()  # as the hub's ClusterWatch does once its watches have loaded
    seen: set[int] = set()
    cache = {"nodes": deep_bytes(live.nodes, seen), "pods": deep_bytes(live.pods, seen) + deep_bytes(live.held, seen)}
    del seen  # a measuring aid, not part of a hub: the collector should not walk it
    log(f"caches hold {cache['nodes'] / len(live.nodes):.0f} bytes a node, {cache['pods'] / len(live.pods):.0f} a pod")
    # the spawners' form reads the hub-wide watch: hand it these reflectors
    watch = hub_state().part(ClusterWatch, ClusterWatch)
    watch.live, watch.nodes, watch.pods = live, nodes, pods
    checks = [await check("list", live, catalog, plan, [], args.admin_kubeconfig)]

    lag.begin()
    lists = (nodes.lists, pods.lists)
    nodes.relist()
    pods.relist()
    while (nodes.lists, pods.lists) == lists or nodes.lists == lists[0] or pods.lists == lists[1]:
        await asyncio.sleep(0.01)
    lag.end("re-list nodes and pods", f"{len(live.pods)} pods")
    checks.append(await check("re-list", live, catalog, plan, [], args.admin_kubeconfig))

    lag.begin()
    await parent_burst("delete")
    await pods_seen(live, len(plan.pods) - len(burst))
    lag.end(f"burst: {BURST} pods deleted", f"{sum(1 for p in burst if p.gpus)} of them holding GPUs")
    checks.append(await check("burst delete", live, catalog, plan, burst, args.admin_kubeconfig))
    lag.begin()
    await parent_burst("create")
    await pods_seen(live, len(plan.pods))
    lag.end(f"burst: {BURST} pods created", "")
    checks.append(await check("burst create", live, catalog, plan, [], args.admin_kubeconfig))
    memory["after_bursts_mib"] = resident_mib()

    renders = await renders_after_change(args, plan, variants, live, catalog, admin, lag)
    checks.append(await check("renders", live, catalog, plan, [], args.admin_kubeconfig))
    lag.stop()
    await nodes.stop()
    await pods.stop()
    await close_hub_state()
    await admin.api_client.close()
    return {
        "mode": "dcloud",
        "nodes": len(plan.nodes),
        "pods": len(plan.pods),
        "memory": memory,
        "per_1000_nodes_mib": (memory["after_nodes_mib"] - memory["baseline_mib"]) / len(plan.nodes) * 1000,
        "per_1000_pods_mib": (memory["after_pods_mib"] - memory["after_nodes_mib"]) / len(live.pods) * 1000,
        "cached": {"nodes": len(live.nodes), "pods": len(live.pods)},
        "cache_bytes": cache,
        "cache_mib_per_1000_pods": cache["pods"] / len(live.pods) * 1000 / 2**20,
        "cache_mib_per_1000_nodes": cache["nodes"] / len(live.nodes) * 1000 / 2**20,
        "phases": [asdict(p) for p in lag.phases],
        "checks": [asdict(c) for c in checks],
        "renders": renders,
        "background_requests": len(counter.background),
    }


async def renders_after_change(
    args: argparse.Namespace,
    plan: sim.FleetPlan,
    variants: list[Variant],
    live: LiveAvailability,
    catalog: Catalog,
    admin: CoreV1Api,
    lag: LoopLag,
) -> dict[str, Any]:
    """Each round changes one GPU pod (deleted, then created again next round), waits until the
    watch shows it, then renders each variant once (order alternating), each on a new spawner."""
    burst = set(random.Random(args.seed).sample(plan.pods, BURST))
    gpu_pods = random.Random(args.seed + 1).sample([p for p in plan.pods if p.gpus and p not in burst], args.renders)
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    memo: list[float] = []
    calls: dict[str, int] = {v.name: 0 for v in variants}
    deleted: list[sim.PodPlan] = []
    lag.begin()
    for i in range(args.renders * 2):
        before = live.availability(catalog)
        if i % 2 == 0:
            target = gpu_pods[i // 2]
            await admin.delete_namespaced_pod(target.name, sim.NAMESPACE, grace_period_seconds=0)
            deleted.append(target)
        else:
            # under a new name: KWOK may still act on the deleted pod's name
            target = dataclasses.replace(deleted.pop(), name=f"{gpu_pods[i // 2].name}-r")
            await admin.create_namespaced_pod(sim.NAMESPACE, target.manifest())
        began = time.perf_counter()
        while live.availability(catalog) == before:
            if time.perf_counter() - began > 60:
                raise AssertionError(f"the change to {target.name} never reached the watch")
            await asyncio.sleep(0.0005)
        order = variants if i % 2 == 0 else variants[::-1]
        for variant in order:
            sample = await render(variant)
            samples[variant.name].append(sample.seconds * 1000)
            calls[variant.name] += len(sample.calls)
            if variant.name == "dcloud":
                shown = live.availability(catalog)  # checked against the cluster after the phase
                for gpu in catalog.gpu_classes:
                    needle = f"{gpu.display_name} · {shown[gpu.id].free} of {shown[gpu.id].total} free"
                    if needle not in sample.html:
                        lines = re.findall(r"[^<>]* free[^<>]*", sample.html)
                        raise AssertionError(f"the form after a change lacks {needle!r}: {lines}")
        memo.append((await render(variants[0])).seconds * 1000)  # no change since the last render
    lag.end("renders after changes", f"{args.renders * 2} changes")

    def summary(ms: list[float]) -> dict[str, float]:
        return {
            "median_ms": round(statistics.median(ms), 3),
            "p95_ms": round(percentile(ms, 0.95), 3),
            "renders": len(ms),
        }

    result = {name: summary(ms) for name, ms in samples.items()}
    result["dcloud-unchanged"] = summary(memo)
    base = result["kubespawner-static"]
    result["ratio"] = {
        "median": result["dcloud"]["median_ms"] / base["median_ms"],
        "p95": result["dcloud"]["p95_ms"] / base["p95_ms"],
    }
    result["api_requests_per_render"] = {k: v / len(samples[k]) for k, v in calls.items()}
    return result


# -- KubeSpawner ---------------------------------------------------------------------------------


async def probe_kubespawner(args: argparse.Namespace) -> dict[str, Any]:
    """KubeSpawner's per-namespace pod reflector over the same pods, for 3 of its watch cycles."""
    plan = sim.plan_scaled_fleet(args.scale, args.seed)
    await point_kubespawner_at(args.kubeconfig)
    await asyncio.get_running_loop().run_in_executor(None, clients.load_config)  # as KubeSpawner does
    memory = {"baseline_mib": resident_mib()}
    lag = LoopLag()
    lag.start()
    lag.begin()
    reflector = PodReflector(namespace=sim.NAMESPACE, labels={sim.BENCH_LABEL: "pod"})
    lists = 0
    original = reflector._list_and_update

    async def counted(*a: Any, **k: Any) -> Any:
        nonlocal lists
        lists += 1
        return await original(*a, **k)

    reflector._list_and_update = counted  # type: ignore[method-assign]
    await reflector.start()
    lag.end("first list", f"{len(reflector.pods)} pods")
    memory["after_pods_mib"] = resident_mib()
    cache = deep_bytes(reflector.resources)
    lag.begin()
    await asyncio.sleep(args.kubespawner_seconds)  # its watches end after 10 s quiet and list again
    lag.end(f"{args.kubespawner_seconds:.0f} s of watching", f"{lists} full lists in all")
    memory["after_watching_mib"] = resident_mib()
    lag.stop()
    await reflector.stop()
    await KubeSpawner._stop_all_reflectors()
    return {
        "mode": "kubespawner",
        "pods": len(reflector.pods),
        "memory": memory,
        "per_1000_pods_mib": (memory["after_pods_mib"] - memory["baseline_mib"]) / max(1, len(reflector.pods)) * 1000,
        "full_lists": lists,
        "cache_bytes": cache,
        "cache_mib_per_1000_pods": cache / max(1, len(reflector.pods)) * 1000 / 2**20,
        "phases": [asdict(p) for p in lag.phases],
        "fleet_pods": len(plan.pods),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hub_probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("dcloud", "kubespawner", "count"))
    parser.add_argument("--kubeconfig", help="the hub's kubeconfig (its ServiceAccount)")
    parser.add_argument("--admin-kubeconfig", required=True, help="for checking and changing pods")
    parser.add_argument("--scale", type=int, help="fleet of scale x 500 nodes")
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--renders", type=int, default=100, help="changes (x2) with renders after each")
    parser.add_argument("--kubespawner-seconds", type=float, default=35.0)
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="leave the collector as Python has it (LeanReflector.tune_garbage_collection False, the hub's default)",
    )
    args = parser.parse_args(argv)
    if args.mode == "count":
        print(json.dumps(asyncio.run(count_from_scratch(args.admin_kubeconfig))))
        return 0
    probe = probe_dcloud if args.mode == "dcloud" else probe_kubespawner
    result = asyncio.run(probe(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
