"""From a GPU server stopped to the next queued notebook Running: DCloud against Kueue's floor.

    .venv/bin/python -m benchmarks.queue_admission [--rounds 20] [--json out.json] [--keep]

Starts (or reuses) a local control plane with Kueue v0.17 (``python -m tests.cluster up`` in
its own run dir, KWOK nodes only), applies the Kueue objects ``dcloud kueue`` prints for a
catalog whose researchers share 4 A100s, then measures, in alternating rounds:

- ``kueue-pod`` (the floor): a plain Pod in the researchers' LocalQueue holds the 4 A100s; a
  second one waits, gated by Kueue. Time from deleting the first (grace 0) until the second is
  Running, as the API server reports it. This is Kueue's own admission, plus the scheduler and
  KWOK, and nothing of DCloud's.
- ``dcloud``: a researcher's DCloudSpawner server (4 × A100) holds the share; a second
  researcher's spawn waits in line (``wait: true``). Time from ``stop()`` of the first (what the
  hub does when the user stops it) until the waiting server's pod is Running (the same
  observation as the floor), and until its ``start()`` returns (DCloud and KubeSpawner noticed).

The pod phase is polled every 50 ms through the admin kubeconfig, for both variants alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from traitlets.config import Config

from benchmarks.form_render import cluster_command, machine, percentile, point_kubespawner_at
from dcloud_spawner.core.queueing import ADMISSION_GATE, QUEUE_LABEL
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import close_hub_state
from dcloud_spawner.kube import DCloudSpawner

NAMESPACE = "dcloud"
QUEUE = "dcloud-researchers"
SHARE = 4  # the researchers' A100s
POLL = 0.05
A100_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_catalog(path: Path) -> Path:
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    data["quotas"] = {"groups": {"researchers": {"max_gpus_per_class": {"a100": SHARE}}}}
    data["queueing"] = {"enabled": True, "max_wait": "10m"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def apply_queues(catalog: Path, kubectl: str, admin: str) -> None:
    env_cmd = [
        sys.executable,
        "-m",
        "dcloud_spawner.cli",
        "kueue",
        str(catalog),
        "--namespace",
        NAMESPACE,
        "--from-cluster",
    ]
    manifests = subprocess.run(
        env_cmd, capture_output=True, text=True, check=True, env={**os.environ, "KUBECONFIG": admin}
    ).stdout
    subprocess.run(
        [kubectl, f"--kubeconfig={admin}", "apply", "--server-side", "-f", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        check=True,
    )


def plain_pod(name: str) -> dict[str, Any]:
    gpus = {"nvidia.com/gpu": str(SHARE), "cpu": "1", "memory": "1Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: QUEUE, "dcloud.bench/queue": "floor"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": A100_SELECTOR,
            "tolerations": [TOLERATION],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/idle:1",
                    "securityContext": RESTRICTED,
                    "resources": {"requests": gpus, "limits": gpus},
                }
            ],
        },
    }


async def pod_state(core: client.CoreV1Api, name: str) -> tuple[str | None, bool]:
    """(phase, gated) of a pod; (None, False) when it does not exist."""
    try:
        pod = await core.read_namespaced_pod(name, NAMESPACE)
    except client.ApiException as exc:
        if exc.status == 404:
            return None, False
        raise
    gated = any(g.name == ADMISSION_GATE for g in pod.spec.scheduling_gates or [])
    return pod.status.phase, gated


async def until(core: client.CoreV1Api, name: str, want: str, timeout: float = 120) -> float:
    """Poll until the pod is ``want`` ("running", "gated" or "gone"); when it was seen so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase, gated = await pod_state(core, name)
        if (
            (want == "running" and phase == "Running" and not gated)
            or (want == "gated" and gated)
            or (want == "gone" and phase is None)
        ):
            return time.monotonic()
        await asyncio.sleep(POLL)
    raise TimeoutError(f"pod {name} not {want} within {timeout}s")


async def floor_round(core: client.CoreV1Api, i: int) -> float:
    holder, waiter = f"floor-hold-{i}", f"floor-wait-{i}"
    await core.create_namespaced_pod(NAMESPACE, plain_pod(holder))
    await until(core, holder, "running")
    await core.create_namespaced_pod(NAMESPACE, plain_pod(waiter))
    await until(core, waiter, "gated")
    await asyncio.sleep(1)  # Kueue has seen it as pending and tried to admit it
    began = time.monotonic()
    await core.delete_namespaced_pod(holder, NAMESPACE, grace_period_seconds=0)
    admitted = await until(core, waiter, "running") - began
    await core.delete_namespaced_pod(waiter, NAMESPACE, grace_period_seconds=0)
    await until(core, waiter, "gone")
    await until(core, holder, "gone")
    return admitted


def spawner(catalog: Path, user: str) -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(catalog)
    cfg.DCloudSpawner.namespace = NAMESPACE
    cfg.DCloudSpawner.start_timeout = 120
    return DCloudSpawner(user=OfflineUser(user, ("researchers",)), hub=offline_hub(), config=cfg)


async def dcloud_round(core: client.CoreV1Api, catalog: Path, i: int) -> tuple[float, float]:
    holder, waiter = spawner(catalog, f"hold-{i}"), spawner(catalog, f"wait-{i}")
    options = {"environment": "pytorch", "gpu": {"type": "a100", "count": SHARE}}
    await holder.dcloud_apply_user_options(holder, options)
    await asyncio.wait_for(holder.start(), 120)
    await waiter.dcloud_apply_user_options(waiter, {**options, "wait": True})
    waiting = asyncio.ensure_future(waiter.start())
    await until(core, waiter.pod_name, "gated")
    await asyncio.sleep(1)
    began = time.monotonic()
    stopping = asyncio.ensure_future(holder.stop(now=True))
    running = await until(core, waiter.pod_name, "running") - began
    await asyncio.wait_for(waiting, 120)
    returned = time.monotonic() - began
    await stopping
    await waiter.stop(now=True)
    return running, returned


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "p95_s": percentile(values, 0.95),
        "min_s": min(values),
        "max_s": max(values),
    }


async def run(catalog: Path, admin: str, hub: str, rounds: int) -> dict[str, Any]:
    await point_kubespawner_at(hub)
    api = await kube_config.new_client_from_config(config_file=admin)
    core = client.CoreV1Api(api)
    floor: list[float] = []
    running: list[float] = []
    returned: list[float] = []
    try:
        await floor_round(core, -1)  # warm-up: the first admission after applying the queues
        await dcloud_round(core, catalog, -1)
        for i in range(rounds):
            floor.append(await floor_round(core, i))
            pod, spawn = await dcloud_round(core, catalog, i)
            running.append(pod)
            returned.append(spawn)
            log(
                f"round {i + 1}/{rounds}: kueue-pod {floor[-1]:.2f}s, dcloud pod Running {pod:.2f}s, "
                f"start() returned {spawn:.2f}s"
            )
    finally:
        await api.close()
        await close_hub_state()
    result = {
        "kueue-pod": summary(floor),
        "dcloud-pod-running": summary(running),
        "dcloud-start-returned": summary(returned),
        "samples": {"kueue-pod": floor, "dcloud-pod-running": running, "dcloud-start-returned": returned},
    }
    base = result["kueue-pod"]
    for name in ("dcloud-pod-running", "dcloud-start-returned"):
        result[name]["ratio_median"] = result[name]["median_s"] / base["median_s"]
        result[name]["ratio_p95"] = result[name]["p95_s"] / base["p95_s"]
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | median | p95 | median ratio to kueue-pod | p95 ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("kueue-pod", "dcloud-pod-running", "dcloud-start-returned"):
        row = result[name]
        ratio = (f"{row['ratio_median']:.2f}x", f"{row['ratio_p95']:.2f}x") if "ratio_median" in row else ("1", "1")
        lines.append(f"| {name} | {row['median_s']:.2f} s | {row['p95_s']:.2f} s | {ratio[0]} | {ratio[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--run-dir", type=Path, default=Path.home() / ".cache" / "dcloud-k8s" / "bench-queue")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)
    admin = cluster_command(args.run_dir, "up")
    hub = str(Path(admin).with_name("hub.kubeconfig"))
    # where tests/cluster/build.sh puts kubectl (the same variables)
    cache = Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s"))
    kubectl = str(cache / os.environ.get("DCLOUD_K8S_VERSION", "v1.36.3") / "bin" / "kubectl")
    try:
        catalog = write_catalog(args.run_dir / "queue-catalog.yaml")
        apply_queues(catalog, kubectl, admin)
        result = asyncio.run(run(catalog, admin, hub, args.rounds))
    finally:
        if not args.keep:
            cluster_command(args.run_dir, "down")
    result["machine"] = machine()
    result["rounds"] = args.rounds
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
