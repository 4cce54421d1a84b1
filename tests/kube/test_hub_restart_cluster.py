"""The hub killed with SIGKILL while one server runs and another starts, then started again.

On real-0, so the servers really answer: the running one stays reachable through the proxy,
the quota ledger counts each server once, the starting one is either completed or cleaned
up, and no pod is left without a server.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.hub import launch_hub, stop_demo_hub
from tests.support.kube_hub import start_kube_hub
from tests.support.package_index import NAME
from tests.support.real_node import package_index, require_real_node, write_catalog

pytestmark = pytest.mark.cluster

SERVER = {"user_options": {"environment": "scipy", "cpu": 0.5, "memory": "1Gi"}}
STARTING = {"user_options": {"environment": "scipy", "cpu": 0.5, "memory": "1Gi", "packages": [NAME]}}


def status_through_proxy(hub, path: str) -> int:
    request = urllib.request.Request(f"{hub.url}{path}", headers={"Authorization": f"token {hub.token}"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(what: str, done, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def pods_of(core, namespace: str, user: str) -> dict[str, str]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"hub.jupyter.org/username={user}").items
    return {p.metadata.annotations.get("hub.jupyter.org/servername", ""): p.status.phase for p in pods
            if not p.metadata.deletion_timestamp}


def test_a_hub_killed_and_restarted_keeps_its_servers_and_counts_them_once(kube_cluster, core, tmp_path_factory):
    real = require_real_node(kube_cluster)
    folder = tmp_path_factory.mktemp("restart-hub")
    namespace = kube_cluster.namespace
    with package_index(real, folder / "index") as url:
        catalog = write_catalog(folder / "catalog.yaml", url)
        hub = start_kube_hub(folder / "hub", kube_cluster, real_node=real, catalog=catalog,
                             users={"rita": ["researchers"]})
        try:
            assert hub.api("POST", "/users/rita/servers/one", SERVER)[0] in (201, 202)
            hub.wait_ready("rita", "one", timeout=180)
            assert status_through_proxy(hub, "/user/rita/one/api/status") == 200
            assert hub.api("POST", "/users/rita/servers/two", STARTING)[0] in (201, 202)

            os.kill(hub.process.pid, signal.SIGKILL)  # a crash: no cleanup, the proxy lives on
            hub.process.wait()
            argv = list(hub.process.args)
            env = {**os.environ, "KUBECONFIG": kube_cluster.hub_kubeconfig}
            port = int(hub.url.rsplit(":", 1)[1])
            old_proxy = [int(p) for p in (folder / "hub" / "jupyterhub-proxy.pid").read_text().split()[:1]]
            hub = launch_hub(argv, hub.state, env, hub.token, hub.password, port)

            # the starting server: completed or cleaned up, never left half-way
            def settled() -> bool:
                _, model = hub.api("GET", "/users/rita")
                two = model["servers"].get("two")
                return two is None or bool(two.get("ready"))

            wait_for("the server that was starting neither completed nor was cleaned up", settled, 180)
            _, model = hub.api("GET", "/users/rita")
            servers = set(model["servers"])
            assert "one" in servers
            wait_for("a pod outlived its server", lambda: set(pods_of(core, namespace, "rita")) == servers, 60)
            assert all(phase == "Running" for phase in pods_of(core, namespace, "rita").values())
            assert status_through_proxy(hub, "/user/rita/one/api/status") == 200

            # the ledger, through the admin page's JSON: each server counted once
            request = urllib.request.Request(f"{hub.url}/services/dcloud/allocations.json",
                                             headers={"Authorization": f"token {hub.token}"})
            with urllib.request.urlopen(request, timeout=20) as response:
                page = json.loads(response.read())
            assert sorted(s["server"] for s in page["servers"] if s["user"] == "rita") == sorted(servers)
            assert page["by_user"]["rita"]["servers"] == len(servers)
            assert not any(Path(f"/proc/{pid}").exists() for pid in old_proxy)  # the crashed hub's proxy is gone
        finally:
            for name in ("one", "two"):
                hub.api("DELETE", f"/users/rita/servers/{name}")
            wait_for("servers stop", lambda: not pods_of(core, namespace, "rita"), 60)
            stop_demo_hub(hub)
