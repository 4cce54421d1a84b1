"""A user's storage on real-0, in Chromium: home and scratch of the sizes chosen, an eviction
explained, a home that grows with its files kept, and packages that persist on it.

The hub mounts the home volume as Zero to JupyterHub does (``singleuser.storage.type: dynamic``:
KubeSpawner's claim ``claim-{user_server}`` on the cluster's default class, mounted at
/home/jovyan), so the package environments live on it. The cluster's default class
``dcloud-local`` makes each volume an ext4 image of exactly its size, so ``df`` in a cell tells
the size for real (less ext4's metadata: 95-97 % at 2-4 GiB, asserted as 94-100 %).

Scratch, the choice made here: one hub, whose catalog the admin changes between the first and
the second start (DCloud reads a changed catalog file at the next request). First ``/scratch``
is a generic ephemeral volume on ``dcloud-local``: ``df`` shows the 2Gi chosen, and writing past
it fails with ENOSPC (no eviction: the file system is full). Then ``/scratch`` is an emptyDir
with ``sizeLimit`` (the catalog's ``storage_class: null``): ``df`` there shows the node's disk,
but the kubelet measures the volume and evicts the pod that writes past the 2Gi, and the next
visit to the form says so in one sentence with the limit.

The story: (1) 3Gi home, 2Gi scratch and two packages: sizes by ``df``, ENOSPC past the
scratch, the packages built on the home and imported; (2) a file kept in the home, then
/scratch filled past its limit: the kubelet evicts the pod (its Evicted event on the pod, which
ends; the status keeps reason Evicted only when the container dies of the kill, and
jupyterhub-singleuser exits 0 on SIGTERM), the form says why; (3) 4Gi home:
the claim grows (its status), ``df`` shows it, the file is there; (4) stop and start with the
same packages: reused, pip never ran (the index saw no request since the build; the
installer's termination message says "reused"); (5) one package changed: a new environment
is built beside the first.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import watch
from kubernetes.client import ApiException

from tests.browser.conftest import login
from tests.browser.jupyterlab import run_cell, watch_progress
from tests.support.hub import stop_demo_hub
from tests.support.kube_hub import start_kube_hub
from tests.support.package_index import EXTRA_MODULE, EXTRA_NAME, MODULE, NAME, serve_index
from tests.support.real_node import require_real_node, write_catalog

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

GI = 1 << 30
USER = "ada"
CLAIM = f"claim-{USER}"  # KubeSpawner's default pvc_name_template, for a default server
CLASS = "dcloud-local"  # the test cluster's default StorageClass
ENVS = "/home/jovyan/.dcloud/envs"
PACKAGES = [NAME, f"{EXTRA_NAME}==1.0"]
CHANGED = [NAME, f"{EXTRA_NAME}==2.0"]

# Zero to JupyterHub 4's hub config for singleuser.storage.type=dynamic (storageClass unset)
HOME_VOLUME = {
    "storage_pvc_ensure": True,
    "pvc_name_template": "claim-{user_server}",
    "storage_access_modes": ["ReadWriteOnce"],
    "volumes": [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
    "volume_mounts": [{"name": "volume-{user_server}", "mountPath": "/home/jovyan"}],
}

# What a cell sees: the sizes df gives, the package environments (not the installer's own
# dot-files), the kept file, the imports.
PROBE = (
    r"""import json, os, subprocess
def df(path):
    out = subprocess.run(['df', '-B1', '--output=size', path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])
seen = {'home': df('/home/jovyan'), 'scratch': df('/scratch')}
seen['envs'] = sorted(n for n in os.listdir('ENVS') if not n.startswith('.'))
try:
    seen['kept'] = open('/home/jovyan/kept.txt').read()
except OSError as e:
    seen['kept'] = e.strerror
import MODULE, EXTRA_MODULE
seen['modules'] = {m.__name__: [m.__file__, m.VERSION] for m in (MODULE, EXTRA_MODULE)}
""".replace("ENVS", ENVS)
    .replace("EXTRA_MODULE", EXTRA_MODULE)
    .replace("MODULE", MODULE)
)

# Write to /scratch until the file system refuses (at most 4 GiB).
FILL = r"""import errno
written, error = 0, None
with open('/scratch/fill', 'wb', buffering=0) as out:
    chunk = bytes(16 << 20)
    try:
        while written < 4 << 30:
            written += out.write(chunk)
    except OSError as e:
        error = errno.errorcode[e.errno]
seen['fill'] = {'written': written, 'error': error}
"""

# Keep a file in the home, then write 2.25 GiB to /scratch (the pod is evicted during or after).
FLOOD = r"""import os
with open('/home/jovyan/kept.txt', 'w') as f:
    f.write('TOKEN')
    f.flush()
    os.fsync(f.fileno())
print('kept; filling /scratch', flush=True)
with open('/scratch/fill', 'wb', buffering=0) as out:
    chunk = bytes(16 << 20)
    for _ in range(144):
        out.write(chunk)
print('filled', flush=True)
"""


def storage_catalog(path: Path, index_url: str, scratch_class: str | None) -> Path:
    """The real-0 catalog with a home to choose on the default class and a scratch disk."""
    data = yaml.safe_load(write_catalog(path, index_url).read_text())
    data["storage"] = {
        "home": {"storage_class": None, "min": "1Gi", "default": "2Gi", "max": "8Gi"},
        "scratch": {"storage_class": scratch_class, "min": "1Gi", "default": "1Gi", "max": "4Gi"},
        "ephemeral": {"request": "256Mi", "limit": "2Gi"},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def user_pods(core, namespace: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=f"hub.jupyter.org/username={USER}").items


def wait_for(check, what: str, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(every)
    return found


def remove_home(core, namespace: str) -> None:
    """No pod and no home claim of the user (a rerun starts from nothing)."""
    for pod in user_pods(core, namespace):
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for(lambda: not user_pods(core, namespace), "the user's pods were not deleted", 60)
    try:
        core.delete_namespaced_persistent_volume_claim(CLAIM, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(gone, f"{CLAIM} was not deleted", 60)


@pytest.fixture(scope="module")
def storage_hub(kube_cluster, core, tmp_path_factory):
    real = require_real_node(kube_cluster)
    folder = tmp_path_factory.mktemp("storage-hub")
    remove_home(core, kube_cluster.namespace)
    with serve_index(folder / "index", real.address) as index:
        catalog = storage_catalog(folder / "catalog.yaml", index.url, scratch_class=CLASS)
        hub = start_kube_hub(
            folder / "hub",
            kube_cluster,
            real_node=real,
            catalog=catalog,
            users={USER: ["students"]},
            spawner=HOME_VOLUME,
        )
        try:
            yield SimpleNamespace(hub=hub, index=index, catalog=catalog)
        finally:
            stop_demo_hub(hub)
            remove_home(core, kube_cluster.namespace)


def start(page, hub, home: str, scratch: str, packages: list[str]) -> str:
    """Fill the form and start; the progress page's text, once JupyterLab is reached."""
    page.goto(f"{hub.url}/hub/spawn")
    page.select_option("#dcloud-environment", "pytorch")
    page.select_option("#dcloud-gpu-type", "")
    page.fill("#dcloud-cpu", "1")
    page.fill("#dcloud-memory", "2Gi")
    page.fill("#dcloud-home", home)
    page.fill("#dcloud-scratch", scratch)
    page.fill("#dcloud-packages", "\n".join(packages))
    page.click("button[type=submit]")
    progress = watch_progress(page, timeout=240)
    page.wait_for_url(re.compile(rf".*/user/{USER}/lab.*"), timeout=240_000)
    # the home keeps JupyterLab's workspace: start from its launcher, not the last notebook
    page.goto(f"{hub.url}/user/{USER}/lab?reset")
    return progress


def cell(page, code: str) -> str:
    """Run ``code`` in a new notebook; its output (one line, so the editor cannot re-indent it)."""
    encoded = base64.b64encode(code.encode()).decode()
    return run_cell(page, f"import base64; exec(base64.b64decode('{encoded}').decode())")


def probe(page, extra: str = "") -> dict:
    output = cell(page, PROBE + extra + "print(json.dumps(seen))\n")
    return json.loads(output.strip().splitlines()[-1])


def stop(page, hub, core, namespace: str) -> None:
    page.goto(f"{hub.url}/hub/home")
    page.click("#stop")
    page.locator("#start").wait_for(state="visible", timeout=60_000)
    wait_for(lambda: not user_pods(core, namespace), "the pod outlived the stop", 60)
    # the page offers a start while the hub still finishes the stop (its /hub/spawn says "pending stop")
    wait_for(lambda: not server_of(hub), "the hub did not finish the stop", 60)


def server_of(hub) -> dict | None:
    """The user's default server as the hub's API tells it (None: stopped)."""
    return (hub.api("GET", f"/users/{USER}")[1] or {}).get("servers", {}).get("")


def installer_said(core, namespace: str) -> str:
    """The package init container's termination message: "built <key>" or "reused <key>"."""
    (pod,) = user_pods(core, namespace)
    (installer,) = [s for s in pod.status.init_container_statuses if s.name == "dcloud-packages"]
    assert installer.state.terminated.exit_code == 0
    return installer.state.terminated.message


def ended(core, namespace: str, pod, timeout: int):
    """The pod once it has ended: every change since ``pod`` was read, from the API's watch (the
    hub deletes an ended pod once it notices)."""
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={pod.metadata.name}",
        resource_version=pod.metadata.resource_version,
        timeout_seconds=timeout,
    ):
        seen = event["object"]
        if seen.status.phase in ("Succeeded", "Failed"):
            stream.stop()
            return seen
    raise AssertionError(f"{pod.metadata.name} did not end in {timeout} s")


def within(size: int, requested: int) -> bool:
    """df's size of an ext4 volume of ``requested`` bytes: the size less ext4's metadata."""
    return 0.94 * requested <= size <= requested


def test_home_scratch_and_packages_on_real_volumes(page, storage_hub, kube_cluster, core):
    hub, index, namespace = storage_hub.hub, storage_hub.index, kube_cluster.namespace
    began = time.monotonic()
    login(page, hub, USER)

    # 1. 3Gi home, 2Gi scratch (a volume of its own), two packages
    progress = start(page, hub, "3Gi", "2Gi", PACKAGES)
    assert f"Built your packages into your home: {', '.join(PACKAGES)}" in progress, progress
    (pod,) = user_pods(core, namespace)
    assert pod.spec.node_name == "real-0"
    claim = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
    assert claim.spec.storage_class_name == CLASS  # the cluster's default
    assert claim.status.phase == "Bound" and claim.status.capacity["storage"] == "3Gi"
    scratch = core.read_namespaced_persistent_volume_claim(f"{pod.metadata.name}-dcloud-scratch", namespace)
    assert scratch.spec.storage_class_name == CLASS and scratch.status.capacity["storage"] == "2Gi"
    built = installer_said(core, namespace)
    assert built.startswith("built ")
    key = built.removeprefix("built ")
    seen = probe(page, FILL)
    assert within(seen["home"], 3 * GI), seen
    assert within(seen["scratch"], 2 * GI), seen
    assert seen["fill"]["error"] == "ENOSPC" and 0.9 * seen["scratch"] <= seen["fill"]["written"] <= seen["scratch"]
    assert seen["envs"] == [key]
    assert seen["modules"] == {
        MODULE: [f"{ENVS}/{key}/{MODULE}/__init__.py", "1.0"],
        EXTRA_MODULE: [f"{ENVS}/{key}/{EXTRA_MODULE}/__init__.py", "1.0"],
    }
    assert any(f"/simple/{EXTRA_NAME}/" in r for r in index.requests) and any(
        f"/simple/{NAME}/" in r for r in index.requests
    )
    pip_requests = list(index.requests)
    stop(page, hub, core, namespace)
    timings = {"1 built, df, ENOSPC": time.monotonic() - began}

    # 2. the admin makes /scratch an emptyDir; a file kept in the home, then /scratch overfilled
    storage_catalog(storage_hub.catalog, index.url, scratch_class=None)
    token = secrets.token_hex(8)
    start(page, hub, "3Gi", "2Gi", PACKAGES)
    (pod,) = user_pods(core, namespace)
    (volume,) = [v for v in pod.spec.volumes if v.name == "dcloud-scratch"]
    assert volume.empty_dir is not None and volume.empty_dir.size_limit == "2Gi"
    assert cell(page, FLOOD.replace("TOKEN", token)).startswith("kept; filling /scratch")

    # The kubelet's eviction: its Evicted event on this pod, and the pod ended. The status keeps
    # reason Evicted only where the container dies of the kill; jupyterhub-singleuser exits 0 on
    # SIGTERM, and the pod then ends Succeeded with no reason (kubernetes/kubernetes#120182).
    gone = ended(core, namespace, pod, timeout=240)
    assert gone.status.phase == "Succeeded" or gone.status.reason == "Evicted", gone.status
    (eviction,) = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.uid={pod.metadata.uid},reason=Evicted"
    ).items
    assert eviction.source.component == "kubelet" and eviction.type == "Warning"
    assert eviction.message.startswith('Usage of EmptyDir volume "dcloud-scratch" exceeds the limit "2Gi".')
    wait_for(lambda: not server_of(hub), "the hub did not notice the eviction", 120, every=1)
    page.goto(f"{hub.url}/hub/spawn")
    assert page.locator("#dcloud-notices").inner_text().strip() == (
        "Your last server was stopped because it wrote more than its 2Gi scratch disk (/scratch) holds, "
        "so Kubernetes evicted it. Choose a larger scratch size below, or write less there."
    )
    timings["2 evicted, told"] = time.monotonic() - began

    # 3. 4Gi home: the claim grows before the pod, the file is kept
    progress = start(page, hub, "4Gi", "2Gi", PACKAGES)
    assert "Growing your home volume from 3Gi to 4Gi" in progress, progress
    assert "has not finished yet" not in progress, progress
    claim = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
    assert claim.spec.resources.requests["storage"] == "4Gi" and claim.status.capacity["storage"] == "4Gi"
    seen = probe(page)
    assert within(seen["home"], 4 * GI), seen
    assert seen["kept"] == token
    assert seen["envs"] == [key] and seen["modules"][EXTRA_MODULE][1] == "1.0"
    stop(page, hub, core, namespace)
    timings["3 grown"] = time.monotonic() - began

    # 4. the same packages again: reused, no pip (the index has seen nothing since the build)
    progress = start(page, hub, "4Gi", "2Gi", PACKAGES)
    assert f"Reusing your packages: {', '.join(PACKAGES)} (built at an earlier start; pip did not run)" in progress, (
        progress
    )
    assert installer_said(core, namespace) == f"reused {key}"
    seen = probe(page)
    assert seen["envs"] == [key]
    assert seen["modules"] == {
        MODULE: [f"{ENVS}/{key}/{MODULE}/__init__.py", "1.0"],
        EXTRA_MODULE: [f"{ENVS}/{key}/{EXTRA_MODULE}/__init__.py", "1.0"],
    }
    assert index.requests == pip_requests  # starts 2, 3 and 4 asked the index for nothing
    stop(page, hub, core, namespace)
    timings["4 reused"] = time.monotonic() - began

    # 5. one package changed: a new environment beside the first
    progress = start(page, hub, "4Gi", "2Gi", CHANGED)
    assert f"Built your packages into your home: {', '.join(CHANGED)}" in progress, progress
    built = installer_said(core, namespace)
    assert built.startswith("built ") and built != f"built {key}"
    changed = built.removeprefix("built ")
    seen = probe(page)
    assert seen["envs"] == sorted([key, changed])
    assert seen["modules"] == {
        MODULE: [f"{ENVS}/{changed}/{MODULE}/__init__.py", "1.0"],
        EXTRA_MODULE: [f"{ENVS}/{changed}/{EXTRA_MODULE}/__init__.py", "2.0"],
    }
    assert any(r.endswith(f"{EXTRA_MODULE}-2.0-py3-none-any.whl") for r in index.requests[len(pip_requests) :])
    stop(page, hub, core, namespace)
    timings["5 rebuilt"] = time.monotonic() - began
    print("storage story, seconds since login:", {k: round(v) for k, v in timings.items()})
