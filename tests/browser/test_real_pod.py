"""The user story in a real container: a student's choice, proven inside the pod on real-0.

Login, the form, the progress page (the package init container at work), JupyterLab reached
through the hub's proxy at the pod's IP, a notebook cell that reads the container's own view of
what was granted, then stop: container, cgroups and network namespace gone.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import login, shot
from tests.browser.jupyterlab import run_cell, watch_progress
from tests.cluster import images
from tests.support.hub import stop_demo_hub
from tests.support.kube_hub import start_kube_hub
from tests.support.package_index import MODULE, NAME
from tests.support.real_node import containers, package_index, require_real_node, write_catalog

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

# Everything the cell reports, as JSON on one line.
PROBE = r"""import json, os, errno
def read(path):
    try:
        return open(path).read().strip()
    except OSError as e:
        return 'error: ' + e.strerror
try:
    open('/datasets/imagenet/new.txt', 'w')
    write = 'written'
except OSError as e:
    write = errno.errorcode[e.errno]
import dcloud_probe
shm = os.statvfs('/dev/shm')
print(json.dumps({'uid': os.getuid(), 'dataset': read('/datasets/imagenet/README.txt'), 'write': write,
  'probe': dcloud_probe.__file__, 'probe_version': dcloud_probe.VERSION, 'shm': shm.f_blocks * shm.f_frsize,
  'memory_limit': read('/sys/fs/cgroup/memory/memory.limit_in_bytes'),
  'cpu_quota': read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'), 'cpu_period': read('/sys/fs/cgroup/cpu/cpu.cfs_period_us'),
  'nvidia': os.environ.get('NVIDIA_VISIBLE_DEVICES'), 'image': os.environ.get('JUPYTER_IMAGE')}))"""


@pytest.fixture(scope="module")
def real_hub(kube_cluster, tmp_path_factory):
    real = require_real_node(kube_cluster)
    folder = tmp_path_factory.mktemp("real-hub")
    with package_index(real, folder / "index") as url:
        catalog = write_catalog(folder / "catalog.yaml", url)
        hub = start_kube_hub(folder / "hub", kube_cluster, real_node=real, catalog=catalog)
        try:
            yield hub, real
        finally:
            stop_demo_hub(hub)


def student_pods(core, namespace):
    return core.list_namespaced_pod(namespace, label_selector="hub.jupyter.org/username=student").items


def cgroups_of(pod_uid: str) -> list[Path]:
    root = Path("/sys/fs/cgroup/memory")
    return [p for p in root.rglob(f"pod{pod_uid}") if p.is_dir()]


def test_student_gets_exactly_the_choice_in_a_real_container(page, real_hub, kube_cluster, core):
    hub, real = real_hub
    netns_dir = real.run.node / "containerd" / "state" / "io.containerd.grpc.v1.cri" / "netns"
    netns_before = set(netns_dir.glob("*"))

    login(page, hub, "student")
    page.goto(f"{hub.url}/hub/spawn")
    page.select_option("#dcloud-environment", "pytorch")
    page.select_option("#dcloud-gpu-type", "")
    page.fill("#dcloud-cpu", "1")
    page.fill("#dcloud-memory", "2Gi")
    page.check("#dcloud-dataset-imagenet")
    page.fill("#dcloud-packages", NAME)
    page.click("button[type=submit]")
    progress = watch_progress(page, timeout=240)
    assert f"Installing extra packages: {NAME}" in progress, progress
    page.wait_for_url(re.compile(r".*/user/student/lab.*"), timeout=240_000)

    (pod,) = student_pods(core, kube_cluster.namespace)
    assert pod.spec.node_name == "real-0"
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip and not pod.status.pod_ip.startswith("127.")
    (notebook,) = pod.status.container_statuses
    assert notebook.container_id.startswith("containerd://") and notebook.ready
    (installer,) = pod.status.init_container_statuses
    assert installer.state.terminated.exit_code == 0
    assert notebook.image == images.NOTEBOOK_PYTORCH_CPU

    # one line, so the editor's auto-indent and bracket closing cannot change the code
    one_line = f"import base64; exec(base64.b64decode('{base64.b64encode(PROBE.encode()).decode()}').decode())"
    output = run_cell(page, one_line)
    seen = json.loads(output.strip().splitlines()[-1])
    shot(page, "09-jupyterlab-in-a-real-container")
    assert seen["uid"] == 1000
    assert seen["dataset"] == "imagenet: sample data of the DCloud test cluster"
    assert seen["write"] == "EROFS"  # mounted read-only
    assert seen["probe"] == f"/opt/dcloud/packages/{MODULE}/__init__.py"  # put there by the init container
    assert seen["probe_version"] == "1.0"
    assert seen["shm"] == 1 << 30  # the catalog's 2Gi, capped at half the server's 2Gi
    assert int(seen["memory_limit"]) == 2 << 30
    assert int(seen["cpu_quota"]) == int(seen["cpu_period"])  # exactly 1 CPU
    assert seen["nvidia"] == "void"  # a CPU server sees no GPU
    assert seen["image"] == images.NOTEBOOK_PYTORCH_CPU

    container = notebook.container_id.removeprefix("containerd://")
    assert container in containers(real)
    cgroups = cgroups_of(pod.metadata.uid)
    assert cgroups, "the pod has no memory cgroup under the kubelet's root"
    page.goto(f"{hub.url}/hub/home")
    page.click("#stop")
    page.locator("#start").wait_for(state="visible", timeout=60_000)
    deadline = time.monotonic() + 60
    while student_pods(core, kube_cluster.namespace) or any(p.exists() for p in cgroups) \
            or set(netns_dir.glob("*")) - netns_before:
        assert time.monotonic() < deadline, "the pod, its cgroups or its network namespace outlived the stop"
        time.sleep(0.5)
    assert container not in containers(real)
