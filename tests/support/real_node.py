"""Pods that really run: placing them on node real-0 (kubelet, containerd, runc), with the
images built here and a package index served from this machine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.cluster import images, node
from tests.cluster.fixture import KubeCluster, unavailable
from tests.cluster.layout import RunDir, bin_dir, default_run_dir
from tests.conftest import EXAMPLE_CATALOG
from tests.support.package_index import serve_index

# What the admin of this test cluster configures so that DCloud's pods land on the real node:
# its label, and tolerations of its taints (the node is tainted so that no other test's pod goes there).
NODE_SELECTOR = {node.NODE_LABEL: "real"}
TOLERATIONS = [{**taint, "operator": "Equal"} for taint in node.TAINTS]
# A container's securityContext under Pod Security "restricted", for pods the tests make themselves.
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class RealNode:
    run: RunDir
    address: str  # the node's IP: pods reach this machine's services there
    socket: Path  # containerd's


def require_real_node(cluster: KubeCluster) -> RealNode:
    """real-0 of the harness's cluster; skipped (failed with CI=true) where it cannot run."""
    if os.environ.get("DCLOUD_TEST_KUBECONFIG"):
        unavailable("real-0 is the local harness's node; DCLOUD_TEST_KUBECONFIG names another cluster")
    run = RunDir(default_run_dir())
    state = node.running(run)
    if state is None:
        unavailable(f"no real node {node.NAME}: {node.unavailable_note(run) or 'not running'}")
    return RealNode(run, state.address, node.NodeDir(run.node).socket)


def write_catalog(path: Path, index_url: str) -> Path:
    """The example catalog with the images built here and the test package index."""
    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    for environment in data["environments"]:
        environment["image"] = {kind: images.LOCAL_NAMES[name] for kind, name in environment["image"].items()}
    data["packages"]["index_url"] = index_url
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spawner_config(catalog: Path) -> dict[str, object]:
    """DCloudSpawner settings for pods on real-0 (what an admin of this cluster would set)."""
    return {
        "catalog_path": str(catalog),
        "node_selector": dict(NODE_SELECTOR),
        "tolerations": [dict(t) for t in TOLERATIONS],
        "image_pull_policy": "Never",  # every image was imported into the node; nothing is pulled
    }


@contextmanager
def package_index(real: RealNode, folder: Path) -> Iterator[str]:
    """The test index, on the node's address (reachable from its pods); yields its URL."""
    with serve_index(folder, real.address) as index:
        yield index.url


def containers(real: RealNode) -> set[str]:
    """The ids of the containers containerd holds for Kubernetes on the node."""
    argv = [str(bin_dir() / "ctr"), "--address", str(real.socket), "-n", node.CRI_NAMESPACE,
            "containers", "list", "--quiet"]
    return set(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.split())
