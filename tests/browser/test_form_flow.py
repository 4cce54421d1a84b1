"""The whole user story in Chromium: log in, fill the form, land in JupyterLab, stop."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import login, shot
from tests.browser.jupyterlab import run_cell, watch_progress

pytestmark = pytest.mark.browser


def test_student_refused_a100_then_lands_in_jupyterlab_and_stops(page, demo):
    login(page, demo, "student")
    page.goto(f"{demo.url}/hub/spawn")
    form = page.locator("#dcloud-form")
    form.wait_for()
    for label in ["Environment", "GPU type", "GPU count", "CPU cores", "Memory", "Datasets", "Extra packages",
                  "Configuration file"]:
        assert page.get_by_text(label, exact=True).first.is_visible(), label
    assert page.locator("#dcloud-gpu-type option").all_inner_texts() == ["No GPU (CPU only)",
                                                                         "NVIDIA T4 16GB · 1 of 1 free"]
    shot(page, "01-form-student")

    # The form never offers an A100 to a student; a hand-edited form asks anyway.
    page.select_option("#dcloud-environment", "tensorflow")
    page.fill("#dcloud-cpu", "3")
    page.fill("#dcloud-memory", "6Gi")
    page.check("#dcloud-dataset-coco")
    page.evaluate("""() => {
        const o = document.createElement('option'); o.value = 'a100'; o.text = 'A100'; o.dataset.max = '8';
        document.getElementById('dcloud-gpu-type').appendChild(o);
    }""")
    page.select_option("#dcloud-gpu-type", "a100")
    page.click("button[type=submit]")
    error = page.locator(".spawn-error-msg")
    error.wait_for()
    assert "GPU class 'a100' is not available to you; you can use: t4." in error.inner_text()
    assert page.input_value("#dcloud-environment") == "tensorflow"
    assert page.input_value("#dcloud-cpu") == "3"
    assert page.input_value("#dcloud-memory") == "6Gi"
    assert page.is_checked("#dcloud-dataset-coco")
    shot(page, "02-form-error")

    # The allowed choice, with one extra package so the progress page has something to show.
    page.select_option("#dcloud-gpu-type", "t4")
    page.fill("#dcloud-packages", "tomli-w")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/hub/spawn-pending/student.*"))
    seen = watch_progress(page)
    assert "Preparing TensorFlow, 1 × NVIDIA T4 16GB, 3 CPU, 6Gi, datasets coco, 1 extra package(s)" in seen
    assert "Installing extra packages: tomli-w" in seen

    page.wait_for_url(re.compile(r".*/user/student/lab.*"), timeout=120_000)
    output = run_cell(
        page,
        "import os; print(os.environ['DCLOUD_ENVIRONMENT'], os.environ['DCLOUD_CPU_LIMIT'], "
        "os.environ['DCLOUD_MEMORY_LIMIT'], 'GPU=' + os.environ['CUDA_VISIBLE_DEVICES'], "
        "sorted(os.listdir('datasets')), __import__('tomli_w').__name__)",
    )
    assert output.strip() == "tensorflow 3 6Gi GPU=0 ['coco'] tomli_w"
    shot(page, "04-jupyterlab")

    _, user = demo.api("GET", "/users/student")
    pid = user["servers"][""]["state"]["pid"]
    page.goto(f"{demo.url}/hub/home")
    page.click("#stop")
    page.locator("#start").wait_for(state="visible", timeout=60_000)
    shot(page, "05-stopped")
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() or "" in demo.api("GET", "/users/student")[1]["servers"]:
        assert time.monotonic() < deadline, "the server process outlived its stop"
        time.sleep(0.3)


def test_researcher_uploads_a_configuration_file(page, demo, tmp_path):
    login(page, demo, "researcher")
    page.goto(f"{demo.url}/hub/spawn")
    bad = tmp_path / "bad.yaml"
    bad.write_text("environment: pytorch\ngpu: {type: t4, count: 9}\n")
    page.set_input_files("#dcloud-config", str(bad))
    page.click("button[type=submit]")
    error = page.locator(".spawn-error-msg")
    error.wait_for()
    assert "GPU count 9 is more than you may use for t4; choose 1 to 4." in error.inner_text()
    shot(page, "06-upload-refused")

    good = tmp_path / "run.yaml"
    good.write_text("environment: scipy\ncpu: 2\nmemory: 3Gi\ndatasets: [medical-scans, imagenet]\n")
    page.set_input_files("#dcloud-config", str(good))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/user/researcher/lab.*"), timeout=120_000)
    env = demo.server_env("researcher", "")
    assert env["DCLOUD_ENVIRONMENT"] == "scipy"
    assert env["DCLOUD_CPU_LIMIT"] == "2" and env["DCLOUD_MEMORY_LIMIT"] == "3Gi"
    assert env["DCLOUD_DATASETS"] == "medical-scans,imagenet"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    demo.stop_server("researcher", "")

    # the next visit pre-selects what the file asked for
    page.goto(f"{demo.url}/hub/spawn")
    assert page.input_value("#dcloud-environment") == "scipy"
    assert page.input_value("#dcloud-memory") == "3Gi"
