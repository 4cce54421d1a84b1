"""The wait in line as a user sees it in Chromium: the form's line lengths and the 'wait' box,
then the progress page telling the place in line, and changing when the line moves.

Kueue v0.17 runs against the real control plane; the servers go to the KWOK fleet.
"""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import login, shot
from tests.support.hub import stop_demo_hub
from tests.support.kube_hub import start_kube_hub
from tests.support.queue_hub import USERS, kueue_objects, queue_catalog, spawn

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

FOUR_A100 = {"environment": "pytorch", "gpu": {"type": "a100", "count": 4}}


@pytest.fixture(scope="module")
def queue_hub(kueue_cluster, tmp_path_factory, core):
    folder = tmp_path_factory.mktemp("queue-browser")
    catalog = queue_catalog(folder / "catalog.yaml")
    with kueue_objects(catalog, kueue_cluster):
        hub = start_kube_hub(folder / "hub", kueue_cluster, catalog=catalog, users=USERS)
        try:
            yield hub
        finally:
            for user in USERS:
                hub.api("DELETE", f"/users/{user}/servers/gpu")
                hub.api("DELETE", f"/users/{user}/server")
            stop_demo_hub(hub)
            deadline = time.monotonic() + 60
            while core.list_namespaced_pod(kueue_cluster.namespace, label_selector="kueue.x-k8s.io/queue-name").items:
                assert time.monotonic() < deadline, "queued pods left behind"
                time.sleep(0.3)


def progress_text(page) -> str:
    return page.locator("#progress-log").text_content(timeout=1000) or ""


def wait_for_text(page, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = progress_text(page)
        if text in seen:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on the progress page within {timeout}s: {progress_text(page)}")


def test_the_progress_page_tells_the_place_in_line_as_it_moves(page, queue_hub, core, kueue_cluster):
    hub = queue_hub
    for i in range(1, 5):  # staff take all 16 A100s
        spawn(hub, f"staff-{i}", FOUR_A100)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [p for p in core.list_namespaced_pod(kueue_cluster.namespace,
                                                       label_selector="kueue.x-k8s.io/queue-name").items
                   if p.status.phase == "Running"]
        if len(running) == 4:
            break
        time.sleep(0.3)
    # someone is in line before us
    spawn(hub, "res-2", {**FOUR_A100, "wait": True}).wait_for("1st in line")

    login(page, hub, "res-1")
    page.goto(f"{hub.url}/hub/spawn")
    option = page.locator("#dcloud-gpu-type option[value=a100]")
    deadline = time.monotonic() + 15
    while "1 waiting" not in (option.text_content() or "") and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    assert option.text_content() == "NVIDIA A100 80GB · 0 of 16 free, 1 waiting"
    assert page.get_by_label("Wait in line for up to 5 minutes").is_visible()
    page.select_option("#dcloud-environment", "pytorch")
    page.select_option("#dcloud-gpu-type", "a100")
    page.fill("#dcloud-gpu-count", "4")
    page.check("#dcloud-wait")
    shot(page, "queue-01-form")
    page.click("button[type=submit]")
    page.wait_for_url("**/spawn-pending/res-1**")

    text = wait_for_text(page, "2nd in line")
    assert "Waiting for 4 × NVIDIA A100 80GB: 2nd in line for group researchers (16 of 16 in use)" in text
    shot(page, "queue-02-second-in-line")

    hub.api("DELETE", "/users/res-2/servers/gpu")  # the one ahead leaves the line
    text = wait_for_text(page, "1st in line")
    assert "Waiting for 4 × NVIDIA A100 80GB: 1st in line for group researchers (16 of 16 in use)" in text
    shot(page, "queue-03-first-in-line")
    assert "/spawn-pending/res-1" in page.url  # still waiting, on the same page
