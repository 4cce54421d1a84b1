"""Form render time and API requests per render: DCloud against KubeSpawner's profile form.

    .venv/bin/python -m benchmarks.form_render [--renders 200] [--json out.json] [--keep]

Starts (or reuses) a local control plane with ``tests.cluster`` in its own run dir, fills it
with 500 simulated nodes and 5,000 pods (``benchmarks.simulated_fleet``), then renders, N times
each, interleaved, in one process:

- ``dcloud``: DCloudSpawner's form, with live GPU availability from the hub-wide watch caches;
- ``kubespawner-static``: KubeSpawner with a static ``profile_list`` offering the same choices
  (one profile per environment x GPU class, GPU count as a profile option), no availability;
- ``kubespawner-live``: the same profiles from a callable ``profile_list`` that lists Nodes and
  Pods from the API on every render and puts "N of M free" into the profile names.

Each render uses a spawner that has not rendered before (KubeSpawner caches a static form on
the spawner object, so this measures its rendering, not a cached string). API requests are
counted per render by wrapping ``kubernetes_asyncio``'s ``ApiClient.call_api``; requests made
by background watches are counted apart. Before timing, the forms are checked to show the
fleet's real free counts. The cluster is stopped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner, clients
from kubespawner.clients import shared_client
from traitlets.config import Config

from benchmarks import simulated_fleet as sim
from dcloud_spawner.core.availability import GpuAvailability
from dcloud_spawner.core.catalog import Catalog, GpuClass
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import close_hub_state
from dcloud_spawner.kube import DCloudSpawner
from dcloud_spawner.kube.facts import compute

USER, GROUPS = "bench-user", ("researchers",)  # researchers may use every GPU class
HUB_NAMESPACE = "dcloud"
Profile = dict[str, Any]

# -- counting API requests ------------------------------------------------------------------------


@dataclass
class RenderCalls:
    """The requests of one render while it runs. Tasks started during a render (the caches'
    watches) inherit it through their context; once closed, their requests count as background."""

    calls: list[str] = field(default_factory=list)
    open: bool = True


_render_calls: contextvars.ContextVar[RenderCalls | None] = contextvars.ContextVar("render_calls", default=None)


def describe_call(resource_path: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``GET /api/v1/pods``, with `` (watch)`` for a watch."""
    query = kwargs.get("query_params", args[1] if len(args) > 1 else None) or []
    watching = any(key == "watch" and value for key, value in query)
    return f"{method} {resource_path}" + (" (watch)" if watching else "")


@dataclass
class RequestCounter:
    """Every ``call_api``: those made inside a measured render go to that render's list, the
    others (background watches of the caches) to ``background``."""

    background: list[str] = field(default_factory=list)

    def install(self) -> None:
        original = ApiClient.call_api

        def counting(api: ApiClient, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
            render = _render_calls.get()
            target = render.calls if render is not None and render.open else self.background
            target.append(describe_call(resource_path, method, args, kwargs))
            return original(api, resource_path, method, *args, **kwargs)

        ApiClient.call_api = counting  # type: ignore[method-assign]


# -- the three spawners ---------------------------------------------------------------------------


def _tolerations(gpu: GpuClass) -> list[dict[str, str]]:
    return [t.model_dump(exclude_none=True) for t in gpu.tolerations]


def _gpu_counts(gpu: GpuClass) -> Profile:
    choices = {}
    for n in range(1, gpu.max_count + 1):
        limits = {gpu.resource: str(n)}
        choices[str(n)] = {
            "display_name": f"{n} GPU{'s' if n > 1 else ''}",
            "default": n == 1,
            "kubespawner_override": {"extra_resource_limits": limits, "extra_resource_guarantees": limits},
        }
    return {"gpus": {"display_name": "GPUs", "choices": choices}}


def static_profiles(catalog: Catalog) -> tuple[list[Profile], dict[str, str]]:
    """KubeSpawner profiles equivalent to the catalog's choices, and profile slug -> GPU class id."""
    cpu, memory = catalog.resources.cpu.default, catalog.resources.memory.default
    profiles: list[Profile] = []
    gpu_of: dict[str, str] = {}
    for env in catalog.environments:
        base = {"image": env.image.cpu, "cpu_limit": cpu, "mem_limit": memory}
        profiles.append(
            {
                "display_name": f"{env.display_name} · CPU only",
                "slug": f"{env.id}-cpu",
                "description": env.description,
                "kubespawner_override": base,
            }
        )
        for gpu in catalog.gpu_classes if env.image.gpu else []:
            slug = f"{env.id}-{gpu.id}"
            override = {
                **base,
                "image": env.image.gpu,
                "node_selector": dict(gpu.node_selector),
                "tolerations": _tolerations(gpu),
            }
            profiles.append(
                {
                    "display_name": f"{env.display_name} · {gpu.display_name}",
                    "slug": slug,
                    "description": gpu.description,
                    "kubespawner_override": override,
                    "profile_options": _gpu_counts(gpu),
                }
            )
            gpu_of[slug] = gpu.id
    profiles[0]["default"] = True
    return profiles, gpu_of


async def _list_items(call: Callable[..., Awaitable[Any]], **kwargs: Any) -> list[dict[str, Any]]:
    response = await call(_preload_content=False, **kwargs)
    return json.loads(await response.read())["items"]


async def availability_from_api(catalog: Catalog) -> dict[str, GpuAvailability]:
    """What sites do without caches: list Nodes and running Pods, then count (raw JSON, the
    cheaper way; DCloud's own counting, so only the data source differs)."""
    api = shared_client("CoreV1Api")
    nodes = await _list_items(api.list_node)
    pods = await _list_items(
        api.list_pod_for_all_namespaces, field_selector="status.phase!=Succeeded,status.phase!=Failed"
    )
    return compute(catalog, nodes, pods)


def live_profile_list(catalog: Catalog) -> Callable[[KubeSpawner], Awaitable[list[Profile]]]:
    profiles, gpu_of = static_profiles(catalog)

    async def profile_list(spawner: KubeSpawner) -> list[Profile]:
        live = await availability_from_api(catalog)
        result = []
        for profile in profiles:
            gpu = live.get(gpu_of.get(profile["slug"], ""))
            name = profile["display_name"] + (f" ({gpu.free} of {gpu.total} free)" if gpu else "")
            result.append({**profile, "display_name": name})
        return result

    return profile_list


def kubespawner(profile_list: Any) -> KubeSpawner:
    cfg = Config()
    cfg.KubeSpawner.namespace = HUB_NAMESPACE
    cfg.KubeSpawner.profile_list = profile_list
    return KubeSpawner(user=OfflineUser(USER, GROUPS), hub=offline_hub(), config=cfg)


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    new_spawner: Callable[[], Any]


def dcloud_spawner() -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(DEMO_CATALOG)
    cfg.DCloudSpawner.namespace = HUB_NAMESPACE
    return DCloudSpawner(user=OfflineUser(USER, GROUPS), hub=offline_hub(), config=cfg)


async def point_kubespawner_at(kubeconfig: str) -> None:
    """KubeSpawner caches its client configuration per process; aim it at ``kubeconfig``."""
    await KubeSpawner._stop_all_reflectors()
    await close_hub_state()
    os.environ["KUBECONFIG"] = kubeconfig
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
    clients.load_config.cache_clear()
    clients._client_cache.clear()


def variants(catalog: Catalog) -> list[Variant]:
    static, _ = static_profiles(catalog)
    live = live_profile_list(catalog)
    return [
        Variant("dcloud", "DCloud (watch caches)", dcloud_spawner),
        Variant("kubespawner-static", "KubeSpawner, static profile_list", lambda: kubespawner(static)),
        Variant("kubespawner-live", "KubeSpawner, profile_list listing Nodes+Pods", lambda: kubespawner(live)),
    ]


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    calls: tuple[str, ...]
    html: str


async def render(variant: Variant) -> Sample:
    spawner = variant.new_spawner()
    calls = RenderCalls()
    token = _render_calls.set(calls)
    try:
        began = time.perf_counter()
        html = await spawner.get_options_form()
        seconds = time.perf_counter() - began
    finally:
        calls.open = False
        _render_calls.reset(token)
    return Sample(seconds, tuple(calls.calls), html)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Summary:
    title: str
    renders: int
    median_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    requests_per_render: float
    form_kib: float
    warmup_ms: float
    warmup_requests: int
    request_kinds: list[str] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)  # in the order measured


def summarize(variant: Variant, samples: list[Sample], warmup: Sample) -> Summary:
    ms = [s.seconds * 1000 for s in samples]
    return Summary(
        title=variant.title,
        renders=len(samples),
        median_ms=statistics.median(ms),
        p95_ms=percentile(ms, 0.95),
        p99_ms=percentile(ms, 0.99),
        mean_ms=statistics.fmean(ms),
        min_ms=min(ms),
        max_ms=max(ms),
        requests_per_render=statistics.fmean(len(s.calls) for s in samples),
        form_kib=len(samples[-1].html) / 1024,
        warmup_ms=warmup.seconds * 1000,
        warmup_requests=len(warmup.calls),
        request_kinds=sorted({c for s in samples for c in s.calls}),
        samples_ms=[round(x, 3) for x in ms],
    )


async def measure(all_variants: list[Variant], renders: int) -> dict[str, list[Sample]]:
    """``renders`` renders of each variant, interleaved, the order rotating every round."""
    samples: dict[str, list[Sample]] = {v.name: [] for v in all_variants}
    for i in range(renders):
        shift = i % len(all_variants)
        for variant in all_variants[shift:] + all_variants[:shift]:
            samples[variant.name].append(await render(variant))
    return samples


# -- checking the forms ---------------------------------------------------------------------------


async def caches_show(catalog: Catalog, expected: Mapping[str, sim.Availability], timeout: float = 120.0) -> None:
    """Wait until DCloud's caches hold the whole fleet (the watch may still be catching up)."""
    wanted = {k: GpuAvailability(v.free, v.total, v.largest_free_block) for k, v in expected.items()}
    deadline = time.monotonic() + timeout
    watch = dcloud_spawner().live_data()
    assert watch is not None
    while (snapshot := watch.availability(catalog)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"DCloud's caches show {snapshot}, the fleet has {wanted}")
        await asyncio.sleep(0.5)


def check_forms(catalog: Catalog, expected: Mapping[str, sim.Availability], forms: Mapping[str, str]) -> list[str]:
    """What each form must show for the fleet; returns the lines it found, raises if one is missing."""
    found = []
    for gpu in catalog.gpu_classes:
        want = expected[gpu.id]
        for name, needle in (
            ("dcloud", f"{gpu.display_name} · {want.free} of {want.total} free"),
            ("kubespawner-live", f"{gpu.display_name} ({want.free} of {want.total} free)"),
            ("kubespawner-static", gpu.display_name),
        ):
            if needle not in forms[name]:
                raise AssertionError(f"the {name} form lacks {needle!r}")
            found.append(f"{name}: {needle}")
    return found


# -- setup ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    cluster_up_s: float = 0.0
    nodes_s: float = 0.0
    pods_s: float = 0.0
    settle_s: float = 0.0
    reused_cluster: bool = False

    @property
    def total_s(self) -> float:
        return self.cluster_up_s + self.nodes_s + self.pods_s + self.settle_s


def _timed(step: Callable[[], object]) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def cluster_command(run_dir: Path, action: str, *args: str) -> str:
    """Run the test harness's command line (``python -m tests.cluster``) on its own run dir.

    A command, not an import: the benchmark depends on the harness's interface, not its code.
    """
    # KWOK nodes only: the benchmark's fleet is the whole cluster (no real node, no image imports)
    env = {**os.environ, "DCLOUD_CLUSTER_DIR": str(run_dir), "DCLOUD_REAL_NODE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.cluster", action, *args], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def set_up(run_dir: Path, plan: sim.FleetPlan, workers: int) -> tuple[str, Setup]:
    """Start (or reuse) the cluster and fill it; return the hub's kubeconfig and the timings."""
    setup = Setup()
    setup.reused_cluster = (
        subprocess.run(
            [sys.executable, "-m", "tests.cluster", "status"],
            env={**os.environ, "DCLOUD_CLUSTER_DIR": str(run_dir)},
            capture_output=True,
        ).returncode
        == 0
    )
    began = time.perf_counter()
    admin_kubeconfig = cluster_command(run_dir, "up", "--no-build")
    setup.cluster_up_s = time.perf_counter() - began
    core = sim.admin_core(admin_kubeconfig, workers)
    sim.remove_other_nodes(core)
    sim.ensure_namespace(core)
    setup.nodes_s = _timed(lambda: sim.create_nodes(core, plan.nodes, workers))
    setup.pods_s = _timed(lambda: sim.create_pods(core, plan.pods, workers))
    setup.settle_s = _timed(lambda: sim.wait_settled(core, plan))
    core.api_client.close()
    return str(Path(admin_kubeconfig).with_name("hub.kubeconfig")), setup


# -- report ---------------------------------------------------------------------------------------


def ratios(summaries: Mapping[str, Summary]) -> dict[str, dict[str, float | None]]:
    ours = summaries["dcloud"]
    result = {}
    for name in ("kubespawner-static", "kubespawner-live"):
        base = summaries[name]
        result[f"dcloud/{name}"] = {
            "median": ours.median_ms / base.median_ms,
            "p95": ours.p95_ms / base.p95_ms,
            "requests": ours.requests_per_render / base.requests_per_render if base.requests_per_render else None,
        }
    return result


def table(summaries: Mapping[str, Summary], ratio: Mapping[str, Mapping[str, float | None]]) -> str:
    lines = [
        "| variant | median ms | p95 ms | API requests / render | DCloud / this (median, p95) | form KiB |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, s in summaries.items():
        r = ratio.get(f"dcloud/{name}")
        versus = f"{r['median']:.2f}x, {r['p95']:.2f}x" if r else "—"
        lines.append(
            f"| {s.title} | {s.median_ms:.2f} | {s.p95_ms:.2f} | {s.requests_per_render:g} "
            f"| {versus} | {s.form_kib:.1f} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


# -- main -----------------------------------------------------------------------------------------


async def run_benchmark(kubeconfig: str, plan: sim.FleetPlan, renders: int) -> dict[str, Any]:
    counter = RequestCounter()
    counter.install()
    await point_kubespawner_at(kubeconfig)
    catalog = Catalog.from_path(DEMO_CATALOG)
    expected = plan.expected()
    all_variants = variants(catalog)
    try:
        warmups = {v.name: await render(v) for v in all_variants}  # DCloud's loads the caches
        await caches_show(catalog, expected)
        checked = check_forms(catalog, expected, {v.name: (await render(v)).html for v in all_variants})
        background_before = len(counter.background)
        began = time.perf_counter()
        samples = await measure(all_variants, renders)
        wall = time.perf_counter() - began
        background = dict(Counter(counter.background[background_before:]))
    finally:
        await KubeSpawner._stop_all_reflectors()
        await close_hub_state()
    summaries = {v.name: summarize(v, samples[v.name], warmups[v.name]) for v in all_variants}
    return {
        "summaries": summaries,
        "ratios": ratios(summaries),
        "checked": checked,
        "measure_wall_s": wall,
        "background_requests": background,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.form_render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--renders", type=int, default=200, help="timed renders per variant (default 200)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(
            os.environ.get("DCLOUD_CLUSTER_DIR")
            or Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s")) / "bench"
        ),
        help="the cluster's run dir (default $DCLOUD_CLUSTER_DIR, else ~/.cache/dcloud-k8s/bench)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster and its fleet running")
    parser.add_argument("--workers", type=int, default=16, help="threads creating nodes and pods (default 16)")
    parser.add_argument("--seed", type=int, default=500, help="seed for the GPUs in use per node")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = sim.plan_fleet(args.seed)
    log(f"cluster in {args.run_dir}; creating {len(plan.nodes)} nodes and {len(plan.pods)} pods")
    try:
        hub_kubeconfig, setup = set_up(args.run_dir, plan, args.workers)
        log(
            f"setup {setup.total_s:.1f}s (cluster {setup.cluster_up_s:.1f}s, nodes {setup.nodes_s:.1f}s, "
            f"pods {setup.pods_s:.1f}s, settling {setup.settle_s:.1f}s); rendering {args.renders}x3"
        )
        result = asyncio.run(run_benchmark(hub_kubeconfig, plan, args.renders))
    finally:
        if not args.keep:
            cluster_command(args.run_dir, "down")
    report = {
        "machine": machine(),
        "fleet": {
            "nodes": len(plan.nodes),
            "pods": len(plan.pods),
            "seed": args.seed,
            "expected": {k: asdict(v) for k, v in plan.expected().items()},
        },
        "setup_s": {**asdict(setup), "total_s": setup.total_s},
        "renders": args.renders,
        **result,
        "summaries": {k: asdict(v) for k, v in result["summaries"].items()},
    }
    print(table(result["summaries"], result["ratios"]))
    print(f"\nsanity: {len(result['checked'])} availability lines found, e.g. {result['checked'][0]!r}")
    print(
        f"API requests outside the renders while timing ({result['measure_wall_s']:.0f}s): "
        f"{result['background_requests']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
