"""What KubeSpawner's own cluster tests get from DCloud's test harness, to run on node real-0.

Its tests/conftest.py and tests/test_spawner.py need a cluster whose pods really run: a hub pod
(``quay.io/jupyterhub/jupyterhub:latest``) whose IP the user pods reach, an exec pod
(``python:3.12-slim``) that the tests ``kubectl exec`` into through the API server to fetch a
user server's URL, and user pods of KubeSpawner's default ``quay.io/jupyterhub/singleuser:latest``.
The harness gives them (and only them):

- those images, built here under those names (tests/cluster/images.py, ``UPSTREAM_SUITE``) and
  imported into real-0's containerd; DCloud's own pods run its catalog's images, which ``up``
  imports (the catalog's names mapped to the images built here, as tests/support/real_node.py does);
- the admin's kubeconfig in ``KUBECONFIG`` (the suite creates and deletes its namespaces);
- namespaces of each run's own (``KUBESPAWNER_TEST_NAMESPACE``/``KUBESPAWNER_ANOTHER_NAMESPACE``,
  which the suite reads), since the DCloud run and the upstream run go side by side;
- the placement on real-0 (its label, its taints tolerated, nothing pulled), which
  tests/upstream/plugin.py applies to the suite's pods: all KWOK's nodes do is pretend.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.cluster import images, node
from tests.cluster.fixture import KubeCluster
from tests.support.real_node import NODE_SELECTOR, TOLERATIONS, RealNode

# read by plugin.py: the pod spec fields that put a pod on real-0, and the catalog to use
PLACEMENT_ENV = "DCLOUD_UPSTREAM_PLACEMENT"
CATALOG_ENV = "DCLOUD_UPSTREAM_CATALOG"


def import_images(real: RealNode) -> list[str]:
    """Build (cached) the suite's images and import them into real-0 unless there already;
    returns the names imported now."""
    built = images.build_all(lambda _line: None, upstream=True)
    return node.import_images(node.NodeDir(real.run.node), node.image_store(real.run), built, lambda _line: None)


def local_catalog(source: Path, path: Path) -> Path:
    """``source`` with each environment's image replaced by the one built here under a local name."""
    data = yaml.safe_load(source.read_text())
    for environment in data["environments"]:
        environment["image"] = {kind: images.LOCAL_NAMES[name] for kind, name in environment["image"].items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def suite_env(cluster: KubeCluster, real: RealNode, catalog: Path, workdir: Path) -> dict[str, str]:
    """The suite's environment (both runs): kubeconfig, placement, DCloud's catalog."""
    import_images(real)
    placement = {"nodeSelector": dict(NODE_SELECTOR), "tolerations": [dict(t) for t in TOLERATIONS]}
    return {
        "KUBECONFIG": cluster.admin_kubeconfig,
        PLACEMENT_ENV: json.dumps(placement),
        CATALOG_ENV: str(local_catalog(catalog, workdir / "catalog.yaml")),
    }


def run_env(run: str) -> dict[str, str]:
    """One run's namespaces (``run``: "dcloud" or "upstream"); the suite creates and deletes them."""
    return {
        "KUBESPAWNER_TEST_NAMESPACE": f"kubespawner-test-{run}",
        "KUBESPAWNER_ANOTHER_NAMESPACE": f"kubespawner-another-{run}",
    }
