"""A real JupyterHub whose servers wait in Kueue's line on the test cluster (KWOK fleet).

``queue_catalog`` is the example catalog with queueing on: researchers share 8 A100s (of the
fleet's 16), a ``staff`` group without a quota fills the cluster through everyone's queue.
``kueue_objects`` applies what ``dcloud kueue --from-cluster`` prints, after a server-side
dry run, and removes it again.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.cluster.layout import bin_dir
from tests.conftest import EXAMPLE_CATALOG
from tests.support.hub import DemoHub

RESEARCHERS_A100 = 8
USERS = {**{f"staff-{i}": ["staff"] for i in range(1, 5)},
         **{f"res-{i}": ["researchers"] for i in range(1, 4)}, "stu-1": ["students"]}


def queue_catalog(path: Path, max_wait: str = "5m") -> Path:
    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    data = copy.deepcopy(data)
    data["policies"]["groups"]["staff"] = {"gpu_classes": "*", "max_gpus": 4,
                                           "totals": {"max_gpus": 16, "max_cpu": 64, "max_memory": "256Gi"}}
    data["quotas"] = {"groups": {"students": {"max_gpus": 4},
                                 "researchers": {"max_gpus_per_class": {"a100": RESEARCHERS_A100}}}}
    data["queueing"] = {"enabled": True, "max_wait": max_wait, "refuse_after": "5s"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)  # whole, so the hub never reads half a catalog
    return path


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args], input=stdin,
                            capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def dcloud_kueue(catalog: Path, kubeconfig: str, namespace: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dcloud_spawner.cli", "kueue", str(catalog), "--namespace",
                             namespace, "--from-cluster"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KUBECONFIG": kubeconfig})
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def kueue_objects(catalog: Path, cluster) -> Iterator[str]:
    """Apply the catalog's Kueue objects (dry run first); delete them afterwards."""
    manifests = dcloud_kueue(catalog, cluster.admin_kubeconfig, cluster.namespace)
    kubectl(cluster.admin_kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifests)
    kubectl(cluster.admin_kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifests)
    try:
        yield manifests
    finally:
        kubectl(cluster.admin_kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-f", "-",
                stdin=manifests, check=False)


def spawn(hub: DemoHub, user: str, options: dict, server: str = "gpu") -> Progress:
    """Ask for a server over REST and follow its progress, without waiting out JupyterHub's
    ``slow_spawn_timeout`` (a server on KWOK never answers, so the POST would hold 10 s)."""
    answer: list[tuple[int, object]] = []
    thread = threading.Thread(target=lambda: answer.append(
        hub.api("POST", f"/users/{user}/servers/{server}", {"user_options": options})), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if answer:
            status, body = answer[0]
            assert status in (201, 202), body
            break
        _, model = hub.api("GET", f"/users/{user}")
        if ((model or {}).get("servers") or {}).get(server, {}).get("pending") == "spawn":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{user}/{server} did not start spawning")
    return Progress(hub, user, server)


class Progress:
    """The hub's progress event stream of one server, read in a thread as a browser would."""

    def __init__(self, hub: DemoHub, user: str, server: str) -> None:
        self.events: list[dict] = []
        self.done = threading.Event()
        url = f"{hub.url}/hub/api/users/{user}/servers/{server}/progress"
        self._request = urllib.request.Request(url, headers={"Authorization": f"token {hub.token}",
                                                             "Accept": "text/event-stream"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with urllib.request.urlopen(self._request, timeout=600) as stream:
                for raw in stream:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except OSError:
            pass
        finally:
            self.done.set()

    @property
    def messages(self) -> list[str]:
        return [e.get("message", "") for e in self.events]

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if text in message:
                    return message
            time.sleep(0.2)
        raise AssertionError(f"no progress message with {text!r} in {timeout}s: {self.messages}")
