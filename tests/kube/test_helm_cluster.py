"""The Zero to JupyterHub release with DCloud's values, on the test cluster.

- Everything ``helm template`` renders, plus helm-values/rbac.yaml, passes
  ``kubectl apply --server-side --dry-run=server`` in a namespace that enforces Pod Security
  "restricted" (and warns on pod templates: the API server names any template it would refuse).
- ``helm upgrade --install`` installs the release there for real; the chart's hub then runs
  DCloud against the cluster as a process on this machine: the chart's own
  ``jupyterhub_config.py`` and ``z2jh.py`` with the release's Secret and ConfigMap laid out where
  the hub container mounts them (tests/support/helm_hub.py), JupyterHub 6.1 from this environment, and
  a token of the release's ``hub`` ServiceAccount (its Role from the chart, plus rbac.yaml).
  A REST spawn creates a pod on a KWOK node; the admin page and ``/hub/metrics`` answer.
- ``helm upgrade`` with another catalog changes the hub's pod template (checksum annotation), so
  the Deployment rolls out a new ReplicaSet; the hub restarted from the upgraded release's
  objects serves the new catalog.

- The chart's continuous image puller lands on every (tainted) GPU node.

The namespace ``dcloud-helm`` and the cluster-wide binding are removed at the end. The hub as
the chart's own Deployment in a real container is in tests/kube/test_helm_real_node.py.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.helm import EXAMPLE_CATALOG, RELEASE, template, value_args
from tests.support.helm_hub import hub_filesystem
from tests.support.helm_release import (
    Release,
    binding_name,
    kubectl,
    manifests,
    release_namespace,
    release_rbac,
    wait_for,
)

pytestmark = pytest.mark.cluster

NAMESPACE = "dcloud-helm"
OIDC = {"dcloud-oidc": {"client-secret": "not-a-real-secret"}}


@pytest.fixture(scope="module")
def namespace(kube_cluster):
    with release_namespace(kube_cluster, NAMESPACE) as name:
        yield name


# --- Server-side dry run ------------------------------------------------------------------------


def dry_run(cluster, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    return kubectl(cluster, "apply", "--server-side", "--dry-run=server", "--field-manager=dcloud-test",
                   "-n", NAMESPACE, "-f", "-", stdin=manifests(objects), check=False)  # fmt: skip


def test_everything_rendered_and_rbac_apply_under_restricted(kube_cluster, namespace):
    objects = template(NAMESPACE, *value_args())
    result = dry_run(kube_cluster, objects + release_rbac(NAMESPACE))
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    applied = result.stdout.splitlines()
    for kind, name in [("deployment.apps", "hub"), ("secret", "hub"), ("daemonset.apps", "continuous-image-puller"),
                       ("networkpolicy.networking.k8s.io", "singleuser"),
                       ("clusterrolebinding.rbac.authorization.k8s.io", binding_name(NAMESPACE))]:  # fmt: skip
        assert f"{kind}/{name} serverside-applied (server dry run)" in applied, result.stdout


def test_the_dry_run_names_a_template_restricted_would_refuse(kube_cluster, namespace, tmp_path):
    """The check above can fail: a hub given a capability is named by the API server."""
    capable = tmp_path / "capable.yaml"
    capable.write_text(yaml.safe_dump({"hub": {"containerSecurityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}}))
    result = dry_run(kube_cluster, template(NAMESPACE, *value_args([capable])))
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr
    assert "NET_ADMIN" in result.stderr


# --- The release, installed, and its hub running -----------------------------------------------


@pytest.fixture(scope="module")
def release(kube_cluster, namespace, tmp_path_factory):
    release = Release(kube_cluster, NAMESPACE, tmp_path_factory.mktemp("release"))
    release.upgrade(EXAMPLE_CATALOG)
    try:
        release.start_hub()
        yield release
    finally:
        release.stop_hub()


def pods(cluster, selector: str) -> list[dict[str, Any]]:
    out = kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def test_the_release_s_pods_are_admitted_under_restricted(kube_cluster, release):
    # Pods are what "enforce" judges; the controllers create the hub's and the proxy's.
    for component in ("hub", "proxy"):
        wait_for(lambda c=component: pods(kube_cluster, f"component={c},release={RELEASE}"), timeout=60)


def test_rest_spawn_creates_a_pod_on_a_kwok_node(kube_cluster, release):
    hub = release.hub
    assert hub.api("POST", "/users/carol")[0] in (201, 409)
    options = {"environment": "scipy", "cpu": 1, "memory": "2Gi"}
    status, body = hub.api("POST", "/users/carol/server", {"user_options": options})
    assert status in (201, 202), body
    (pod,) = wait_for(lambda: [p for p in pods(kube_cluster, "hub.jupyter.org/username=carol")
                               if p["spec"].get("nodeName")], timeout=60)  # fmt: skip
    node = json.loads(kubectl(kube_cluster, "get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
    assert node["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "quay.io/jupyter/scipy-notebook:2025-07-07"
    assert container["resources"]["limits"]["cpu"] in ("1", 1)
    # The chart's labels, set by its jupyterhub_config.py, on DCloud's pod.
    assert pod["metadata"]["labels"]["release"] == RELEASE
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubespawner"
    hub.api("DELETE", "/users/carol/server")


def test_admin_page_and_metrics_answer(release):
    hub = release.hub
    status, body = hub.get("/services/dcloud/allocations.json")
    assert status == 200, body
    assert "catalog_error" in json.loads(body)
    status, body = hub.get("/hub/metrics")
    assert status == 200
    assert b"dcloud_gpus_total" in body and b"jupyterhub_" in body


def test_the_culler_service_runs_with_its_token(release):
    # JupyterHub starts the service with the chart-generated token; its requests succeed.
    def culler_listed() -> bool:
        log = release.hub.state.joinpath("hub.log").read_text(errors="replace")
        return "dcloud-idle-culler" in log and "/hub/api/users" in log and " 200 GET /hub/api/users" in log

    wait_for(culler_listed, timeout=90, interval=2)


def test_helm_upgrade_with_a_new_catalog_restarts_the_hub_with_it(kube_cluster, release, tmp_path):
    def hub_template() -> dict[str, Any]:
        out = kubectl(kube_cluster, "-n", NAMESPACE, "get", "deployment", "hub", "-o", "json").stdout
        return json.loads(out)

    before = hub_template()
    refused = release.hub.api("POST", "/users/dora")
    assert refused[0] in (201, 409)
    status, body = release.hub.api("POST", "/users/dora/server", {"user_options": {"environment": "r-lang"}})
    assert status == 400 and "r-lang" in json.dumps(body)

    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    catalog["environments"].append({"id": "r-lang", "display_name": "R", "description": "R and IRkernel.",
                                    "image": {"cpu": "quay.io/jupyter/r-notebook:2025-07-07"}})  # fmt: skip
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(catalog, sort_keys=False))
    release.upgrade(changed)

    after = hub_template()
    annotations = lambda d: d["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(after)["checksum/secret"] != annotations(before)["checksum/secret"]
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    # The Deployment controller rolls out a new ReplicaSet for the new template.
    revision = after["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
    wait_for(lambda: hub_template()["metadata"]["annotations"]["deployment.kubernetes.io/revision"] != revision
             or hub_template()["status"].get("observedGeneration") == after["metadata"]["generation"])  # fmt: skip
    sets = json.loads(kubectl(kube_cluster, "-n", NAMESPACE, "get", "replicasets", "-l",
                              f"component=hub,release={RELEASE}", "-o", "json").stdout)["items"]  # fmt: skip
    assert len(sets) >= 2

    hub = release.start_hub()  # the new pod: the upgraded Secret's files
    mounted = hub_filesystem(release.objects(), tmp_path / "check", NAMESPACE, OIDC).mounted
    assert yaml.safe_load(mounted["/etc/dcloud/catalog.yaml"])["environments"][-1]["id"] == "r-lang"
    options = {"environment": "r-lang", "cpu": 1, "memory": "2Gi"}
    status, body = hub.api("POST", "/users/dora/server", {"user_options": options})
    assert status in (201, 202), body
    wait_for(lambda: pods(kube_cluster, "hub.jupyter.org/username=dora"), timeout=60)
    hub.api("DELETE", "/users/dora/server")


def test_the_image_puller_runs_on_every_gpu_node(kube_cluster, release):
    """The continuous puller (pulling the catalog's images) tolerates the GPU nodes' taint, so
    the DaemonSet controller puts a puller on each of them."""
    nodes = json.loads(kubectl(kube_cluster, "get", "nodes", "-o", "json").stdout)["items"]
    gpu_nodes = {n["metadata"]["name"] for n in nodes
                 if any(t["key"] == "nvidia.com/gpu" for t in n["spec"].get("taints") or [])
                 and not any(t["key"] == "dcloud.test/node" for t in n["spec"].get("taints") or [])}  # fmt: skip
    assert gpu_nodes, "the test cluster has tainted GPU nodes"

    def pulled_on() -> set[str]:
        pullers = pods(kube_cluster, f"component=continuous-image-puller,release={RELEASE}")
        return {p["spec"].get("nodeName") for p in pullers}

    wait_for(lambda: gpu_nodes <= pulled_on(), timeout=60)
    images = {c["image"] for p in pods(kube_cluster, "component=continuous-image-puller")
              for c in p["spec"]["initContainers"]}  # fmt: skip
    assert "ghcr.io/dcloud-project/notebook-pytorch-cuda:2026.11" in images
