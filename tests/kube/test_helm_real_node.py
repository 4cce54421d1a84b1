"""The chart's own hub Deployment in a real container on node real-0.

The release is installed with ``helm upgrade --install`` as in tests/kube/test_helm_cluster.py; here
its hub pod runs for real: the hub image built here from images/hub/Dockerfile (on the stand-in
of the chart's hub image; tests/cluster/images.py) is imported into real-0's containerd, and the
kubelet runs it with the chart's own mounts, ServiceAccount token, probes and security context.
What a test cluster without Services and without the chart's other images lacks is given in the
values (and only that): the pod is placed on real-0 and tolerates its taint; it reaches the API
server, which listens on this machine's loopback, through a relay on the node's address
(``hostAliases`` names it ``kubernetes.default.svc``, as in the server certificate); the hub
starts its own proxy; the database is in memory (no StorageClass).

The kubelet's readiness probe (``/hub/health``) passing is the hub up in its container; then
the test talks to it at the pod's IP: a REST spawn creates a pod on a KWOK node, metrics
answer, and ``helm upgrade`` with a changed catalog replaces the pod (checksum annotation) by
one whose hub accepts the new environment.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.cluster import images, node
from tests.cluster.layout import bin_dir
from tests.support.helm import EXAMPLE_CATALOG
from tests.support.helm_release import Release, kubectl, release_namespace, tcp_forward, wait_for
from tests.support.real_node import NODE_SELECTOR, TOLERATIONS, require_real_node

pytestmark = pytest.mark.cluster

NAMESPACE = "dcloud-helm-real"
API_HOST = "kubernetes.default.svc"  # in the API server's certificate


def import_hub_image(real) -> str:
    """Build (cached) the hub image and import it into real-0's containerd; its name."""
    (hub,) = [i for i in images.build_all(lambda _line: None, {images.HUB}) if i.name == images.HUB]
    subprocess.run([str(bin_dir() / "ctr"), "--address", str(real.socket), "-n", node.CRI_NAMESPACE,
                    "images", "import", "--local", str(hub.archive)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return hub.name


def in_pod_values(image: str, relay_ip: str, relay_port: int) -> dict[str, Any]:
    name, tag = image.rsplit(":", 1)
    # No proxy pod runs here (the chart's proxy image is not on this test node), and the tests
    # talk to the hub's own port: the hub keeps its routes to itself.
    routes = "\n".join([
        "from jupyterhub.proxy import Proxy",
        "class RouteTable(Proxy):",
        "    routes = {}",
        "    async def add_route(self, routespec, target, data):",
        "        self.routes[routespec] = {'routespec': routespec, 'target': target, 'data': data}",
        "    async def delete_route(self, routespec):",
        "        self.routes.pop(routespec, None)",
        "    async def get_all_routes(self):",
        "        return dict(self.routes)",
        "c.JupyterHub.proxy_class = RouteTable",
        "c.RouteTable.should_start = False",
    ])  # fmt: skip
    return {
        "scheduling": {"userScheduler": {"enabled": False}},
        "singleuser": {"storage": {"type": "none"}},
        "hub": {
            "image": {"name": name, "tag": tag, "pullPolicy": "Never"},
            "db": {"type": "sqlite-memory"},
            "nodeSelector": dict(NODE_SELECTOR),
            "tolerations": [dict(t) for t in TOLERATIONS],
            "extraEnv": {"KUBERNETES_SERVICE_HOST": API_HOST, "KUBERNETES_SERVICE_PORT": str(relay_port)},
            "extraPodSpec": {"hostAliases": [{"ip": relay_ip, "hostnames": [API_HOST]}]},
            "extraConfig": {"zz-test-node": routes},
            "services": {"tests": {}},
            "loadRoles": {"tests": {"scopes": ["admin:users", "admin:servers", "list:users", "read:users",
                                               "servers", "read:metrics"], "services": ["tests"]}},
        },
    }  # fmt: skip


class PodHub:
    """The hub in its pod, at the pod's IP, with the chart-generated token of service `tests`."""

    def __init__(self, release: Release) -> None:
        self.release = release

    def pod(self) -> dict[str, Any] | None:
        ready = [
            p
            for p in self.release.pods("component=hub")
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return ready[0] if ready else None  # fmt: skip

    def crashed(self) -> bool:
        """A hub container that exited once will not get Ready by waiting."""
        statuses = [s for p in self.release.pods("component=hub") for s in p["status"].get("containerStatuses", [])]
        return any(s.get("restartCount", 0) > 0 for s in statuses)

    def token(self) -> str:
        secret = json.loads(kubectl(self.release.cluster, "-n", NAMESPACE, "get", "secret", "hub", "-o", "json").stdout)
        return base64.b64decode(secret["data"]["hub.services.tests.apiToken"]).decode()

    def api(self, pod: dict, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://{pod['status']['podIP']}:8081/hub{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token()}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, raw
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture(scope="module")
def pod_hub(kube_cluster, tmp_path_factory):
    real = require_real_node(kube_cluster)
    image = import_hub_image(real)
    api = urlsplit(yaml.safe_load(Path(kube_cluster.admin_kubeconfig).read_text())["clusters"][0]["cluster"]["server"])
    with release_namespace(kube_cluster, NAMESPACE), tcp_forward(real.address, (api.hostname, api.port)) as port:
        # The Secret an operator creates before installing (values.yaml reads the OIDC secret from it).
        kubectl(kube_cluster, "-n", NAMESPACE, "create", "secret", "generic", "dcloud-oidc",
                "--from-literal=client-secret=not-a-real-secret")  # fmt: skip
        release = Release(kube_cluster, NAMESPACE, tmp_path_factory.mktemp("real-release"),
                          in_pod_values(image, real.address, port), here=False)  # fmt: skip
        release.upgrade(EXAMPLE_CATALOG)
        hub = PodHub(release)
        try:
            wait_for(lambda: hub.pod() or hub.crashed(), timeout=180, interval=2)
            if hub.pod() is None:
                raise TimeoutError
        except TimeoutError:
            pods = kubectl(kube_cluster, "-n", NAMESPACE, "describe", "pods", "-l", "component=hub").stdout
            logs = kubectl(kube_cluster, "-n", NAMESPACE, "logs", "deploy/hub", "--tail=40", check=False)
            pytest.fail(f"the hub pod did not get Ready:\n{pods[-3000:]}\n{logs.stdout}{logs.stderr}")
        yield hub


def test_the_hub_runs_in_its_pod_on_real_0(pod_hub):
    pod = pod_hub.pod()
    assert pod["spec"]["nodeName"] == node.NAME
    (container,) = pod["spec"]["containers"]
    assert container["args"][-1] == "--upgrade-db"
    status, body = pod_hub.api(pod, "GET", "/api/")
    assert status == 200 and json.loads(body)["version"].startswith("6.1")


def test_the_pod_hub_spawns_on_a_kwok_node(pod_hub, kube_cluster):
    pod = pod_hub.pod()
    assert pod_hub.api(pod, "POST", "/api/users/erin")[0] in (201, 409)
    options = {"environment": "scipy", "cpu": 1, "memory": "2Gi"}
    status, body = pod_hub.api(pod, "POST", "/api/users/erin/server", {"user_options": options})
    assert status in (201, 202), body
    (user_pod,) = wait_for(lambda: [p for p in pod_hub.release.pods("hub.jupyter.org/username=erin")
                                    if p["spec"].get("nodeName")], timeout=60)  # fmt: skip
    assert user_pod["spec"]["nodeName"] != node.NAME
    status, body = pod_hub.api(pod, "GET", "/metrics")
    assert status == 200 and b"dcloud_gpus_total" in body
    pod_hub.api(pod, "DELETE", "/api/users/erin/server")


def test_helm_upgrade_with_a_new_catalog_replaces_the_pod(pod_hub, tmp_path):
    before = pod_hub.pod()
    status, _ = pod_hub.api(before, "POST", "/api/users/fred")
    status, body = pod_hub.api(before, "POST", "/api/users/fred/server", {"user_options": {"environment": "r-lang"}})
    assert status == 400 and b"r-lang" in body

    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    catalog["environments"].append({"id": "r-lang", "display_name": "R", "description": "R and IRkernel.",
                                    "image": {"cpu": "quay.io/jupyter/r-notebook:2025-07-07"}})  # fmt: skip
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(catalog, sort_keys=False))
    pod_hub.release.upgrade(changed)

    after = wait_for(lambda: (p := pod_hub.pod()) and p["metadata"]["uid"] != before["metadata"]["uid"] and p,
                     timeout=180, interval=2)  # fmt: skip
    checksum = "checksum/secret"
    assert after["metadata"]["annotations"][checksum] != before["metadata"]["annotations"][checksum]
    assert pod_hub.api(after, "POST", "/api/users/fred")[0] in (201, 409)
    options = {"environment": "r-lang", "cpu": 1, "memory": "2Gi"}
    status, body = pod_hub.api(after, "POST", "/api/users/fred/server", {"user_options": options})
    assert status in (201, 202), body
    pod_hub.api(after, "DELETE", "/api/users/fred/server")
