"""The Zero to JupyterHub release with DCloud's values, on the test cluster.

- Everything ``helm template`` renders, plus helm-values/rbac.yaml, passes
  ``kubectl apply --server-side --dry-run=server`` in a namespace that enforces Pod Security
  "restricted" (and warns on pod templates: the API server names any template it would refuse).
- ``helm upgrade --install`` installs the release there for real; the chart's hub then runs
  DCloud against the cluster as a process on this machine: the chart's own
  ``jupyterhub_config.py`` and ``z2jh.py`` with the release's Secret and ConfigMap laid out where
  the hub container mounts them (tests/helm_hub.py), JupyterHub 6.1 from this environment, and
  a token of the release's ``hub`` ServiceAccount (its Role from the chart, plus rbac.yaml).
  A REST spawn creates a pod on a KWOK node; the admin page and ``/hub/metrics`` answer.
- ``helm upgrade`` with another catalog changes the hub's pod template (checksum annotation), so
  the Deployment rolls out a new ReplicaSet; the hub restarted from the upgraded release's
  objects serves the new catalog.

The namespace ``dcloud-helm`` and the cluster-wide binding are removed at the end.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.layout import bin_dir
from tests.helm import (
    EXAMPLE_CATALOG,
    RELEASE,
    helm,
    rbac_objects,
    require_helm_and_chart,
    template,
    value_args,
)
from tests.helm_hub import hub_environment, hub_filesystem, outside_the_cluster, require_mount_namespaces
from tests.hub import DemoHub, free_port, launch_hub, stop_demo_hub

pytestmark = pytest.mark.cluster

NAMESPACE = "dcloud-helm"
OIDC = {"dcloud-oidc": {"client-secret": "not-a-real-secret"}}
# This cluster's harness already binds rbac.yaml's ClusterRole to namespace `dcloud`'s hub under
# the file's binding name; the release here gets a binding of its own name.
BINDING = f"dcloud-hub-nodes-{NAMESPACE}"


def kubectl(cluster, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(bin_dir() / "kubectl"), "--kubeconfig", cluster.admin_kubeconfig, *args],
                            input=stdin, capture_output=True, text=True, timeout=120)  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()}")
    return result


def release_rbac() -> list[dict[str, Any]]:
    objects = rbac_objects(NAMESPACE)
    for obj in objects:
        if obj["kind"] == "ClusterRoleBinding":
            obj["metadata"]["name"] = BINDING
    return objects


def manifests(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


@pytest.fixture(scope="module")
def namespace(kube_cluster):
    require_helm_and_chart()
    kubectl(kube_cluster, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl(kube_cluster, "create", "namespace", NAMESPACE)
    kubectl(kube_cluster, "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest", "pod-security.kubernetes.io/warn=restricted",
            "pod-security.kubernetes.io/warn-version=latest")  # fmt: skip
    yield NAMESPACE
    kubectl(kube_cluster, "delete", "clusterrolebinding", BINDING, "--ignore-not-found", check=False)
    for kind in ("clusterrole", "clusterrolebinding"):  # the chart's cluster-wide objects, by release label
        kubectl(kube_cluster, "delete", kind, "-l", f"release={RELEASE}", "--ignore-not-found", check=False)
    kubectl(kube_cluster, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)


# --- Server-side dry run ------------------------------------------------------------------------


def dry_run(cluster, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    return kubectl(cluster, "apply", "--server-side", "--dry-run=server", "--field-manager=dcloud-test",
                   "-n", NAMESPACE, "-f", "-", stdin=manifests(objects), check=False)  # fmt: skip


def test_everything_rendered_and_rbac_apply_under_restricted(kube_cluster, namespace):
    objects = template(NAMESPACE, *value_args())
    result = dry_run(kube_cluster, objects + release_rbac())
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    applied = result.stdout.splitlines()
    for kind, name in [("deployment.apps", "hub"), ("secret", "hub"), ("daemonset.apps", "continuous-image-puller"),
                       ("networkpolicy.networking.k8s.io", "singleuser"),
                       ("clusterrolebinding.rbac.authorization.k8s.io", BINDING)]:  # fmt: skip
        assert f"{kind}/{name} serverside-applied (server dry run)" in applied, result.stdout


def test_the_dry_run_names_a_template_restricted_would_refuse(kube_cluster, namespace, tmp_path):
    """The check above can fail: a hub given a capability is named by the API server."""
    capable = tmp_path / "capable.yaml"
    capable.write_text(yaml.safe_dump({"hub": {"containerSecurityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}}))
    result = dry_run(kube_cluster, template(NAMESPACE, *value_args([capable])))
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr
    assert "NET_ADMIN" in result.stderr


# --- The release, installed, and its hub running -----------------------------------------------


class Release:
    """The release in ``dcloud-helm`` and the chart's hub running from its objects."""

    def __init__(self, cluster, root: Path) -> None:
        self.cluster, self.root = cluster, root
        self.port, self.hub_port, self.proxy_port = free_port(), free_port(), free_port()
        self.overlay = root / "outside-the-cluster.yaml"
        self.overlay.write_text(yaml.safe_dump(outside_the_cluster(self.port, self.hub_port, self.proxy_port)))
        self.hub: DemoHub | None = None
        self.starts = 0
        self.install_seconds = 0.0

    def upgrade(self, catalog: Path) -> None:
        _, chart = require_helm_and_chart()
        helm("upgrade", "--install", RELEASE, str(chart), "--namespace", NAMESPACE,
             *value_args([self.overlay], catalog=catalog), kubeconfig=self.cluster.admin_kubeconfig)  # fmt: skip

    def objects(self) -> list[dict[str, Any]]:
        """What the release holds now (``helm get manifest``), generated tokens included."""
        out = helm("get", "manifest", RELEASE, "--namespace", NAMESPACE,
                   kubeconfig=self.cluster.admin_kubeconfig).stdout  # fmt: skip
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def service_account_kubeconfig(self) -> Path:
        """A kubeconfig with a token of the release's ``hub`` ServiceAccount."""
        token = kubectl(self.cluster, "-n", NAMESPACE, "create", "token", "hub", "--duration=1h").stdout.strip()
        admin = yaml.safe_load(Path(self.cluster.admin_kubeconfig).read_text())
        path = self.root / "hub-sa.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
            "users": [{"name": "hub", "user": {"token": token}}],
            "contexts": [{"name": "hub", "context": {"cluster": admin["clusters"][0]["name"], "user": "hub",
                                                     "namespace": NAMESPACE}}],
            "current-context": "hub",
        }))  # fmt: skip
        path.chmod(0o600)
        return path

    def start_hub(self) -> DemoHub:
        """The chart's hub, from the release's current objects, in a fresh working directory."""
        require_mount_namespaces()
        self.stop_hub()
        self.starts += 1
        objects = self.objects()
        fs = hub_filesystem(objects, self.root / f"hub-{self.starts}", NAMESPACE, OIDC)
        secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "hub")
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        token = {**data, **(secret.get("stringData") or {})}["hub.services.tests.apiToken"]
        state = self.root / "srv"  # the hub's working directory: its database outlives a restart
        env = hub_environment(fs, KUBECONFIG=str(self.service_account_kubeconfig()))
        self.hub = launch_hub(fs.command(), state, env, token, "", self.port)
        return self.hub

    def stop_hub(self) -> None:
        if self.hub is not None:
            stop_demo_hub(self.hub)
            self.hub = None


@pytest.fixture(scope="module")
def release(kube_cluster, namespace, tmp_path_factory):
    kubectl(kube_cluster, "apply", "--server-side", "--field-manager=dcloud-test", "-f", "-",
            stdin=manifests(release_rbac()))  # fmt: skip
    release = Release(kube_cluster, tmp_path_factory.mktemp("release"))
    started = time.monotonic()
    release.upgrade(EXAMPLE_CATALOG)
    release.install_seconds = time.monotonic() - started
    try:
        release.start_hub()
        yield release
    finally:
        release.stop_hub()


def pods(cluster, selector: str) -> list[dict[str, Any]]:
    out = kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def wait_for(condition, timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


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
    status, body = hub.get("/hub/dcloud/allocations.json")
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
