"""The same story on the real control plane: a real Pod, run by the test agent, proxied."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.conftest import login, shot
from tests.browser.jupyterlab import run_cell
from tests.hub import stop_demo_hub
from tests.kube_hub import start_kube_hub

pytestmark = [pytest.mark.browser, pytest.mark.cluster]


@pytest.fixture(scope="module")
def kube_hub(kube_cluster, tmp_path_factory):
    hub = start_kube_hub(tmp_path_factory.mktemp("kube-hub"), kube_cluster)
    yield hub
    stop_demo_hub(hub)



def student_pods(core, namespace):
    return core.list_namespaced_pod(namespace, label_selector="hub.jupyter.org/username=student").items


def test_student_reaches_jupyterlab_in_a_real_pod_and_stops_it(page, kube_hub, kube_cluster, core):
    login(page, kube_hub, "student")
    page.goto(f"{kube_hub.url}/hub/spawn")
    page.select_option("#dcloud-environment", "scipy")
    page.fill("#dcloud-cpu", "1")
    page.fill("#dcloud-memory", "2Gi")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/user/student/lab.*"), timeout=120_000)

    (pod,) = student_pods(core, kube_cluster.namespace)
    assert pod.spec.node_name == "local-0"
    assert pod.status.phase == "Running" and pod.status.pod_ip.startswith("127.2.")
    assert pod.metadata.labels["dcloud.io/environment"] == "scipy"
    output = run_cell(page, "import os; print(os.environ['DCLOUD_ENVIRONMENT'], os.environ['JUPYTER_IMAGE'])")
    assert output.strip() == "scipy quay.io/jupyter/scipy-notebook:2025-07-07"
    shot(page, "07-jupyterlab-on-cluster")

    page.goto(f"{kube_hub.url}/hub/home")
    page.click("#stop")
    page.locator("#start").wait_for(state="visible", timeout=60_000)
    deadline = time.monotonic() + 30
    while student_pods(core, kube_cluster.namespace):
        assert time.monotonic() < deadline, "the pod outlived the stop"
        time.sleep(0.3)
