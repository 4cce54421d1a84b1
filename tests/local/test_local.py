"""The local backend behind a real JupyterHub: REST user_options, GPU pinning, processes."""

from __future__ import annotations

import time

import pytest

from tests.support.hub import start_demo_hub, stop_demo_hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_demo_hub(tmp_path_factory.mktemp("demo"), simulate_gpus="Tesla T4,Tesla T4")
    yield hub
    stop_demo_hub(hub)


def test_rest_refusal_is_a_400_with_the_sentence(hub):
    status, body = hub.api("POST", "/users/student/servers/big", {"user_options": {"gpu": {"type": "a100"}}})
    assert status == 400
    assert body["message"] == "GPU class 'a100' is not available to you; you can use: t4."
    _, user = hub.api("GET", "/users/student")
    assert "big" not in user["servers"] or not user["servers"]["big"].get("ready")


def test_rest_unknown_field_is_refused_and_nothing_runs(hub):
    status, body = hub.api("POST", "/users/guest/servers/evil",
                           {"user_options": {"environment": "scipy", "cmd": ["sh", "-c", "id"]}})
    assert status == 400
    assert body["message"].startswith("Unknown field 'cmd'")
    _, user = hub.api("GET", "/users/guest")
    assert not (user["servers"].get("evil") or {}).get("ready")


def test_cpu_server_gets_its_environment_and_no_gpu(hub):
    status, _ = hub.api("POST", "/users/guest/servers/cpu",
                        {"user_options": {"environment": "scipy", "cpu": 1, "memory": "2Gi",
                                          "datasets": ["coco"]}})
    assert status in (201, 202)
    hub.wait_ready("guest", "cpu")
    env = hub.server_env("guest", "cpu")
    assert env["DCLOUD_ENVIRONMENT"] == "scipy"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["DCLOUD_CPU_LIMIT"] == "1" and env["DCLOUD_MEMORY_LIMIT"] == "2Gi"
    workdir = hub.state / "servers" / "guest" / "cpu"
    assert (workdir / "datasets" / "coco" / "README.txt").exists()
    if env["DCLOUD_DATASETS_READ_ONLY"] == "1":  # the hub could bind-mount (root, mount rights)
        with pytest.raises(OSError):
            (workdir / "datasets" / "coco" / "written-by-server.txt").write_text("x")
    else:
        assert (workdir / "datasets" / "coco").is_symlink()
    hub.stop_server("guest", "cpu")


def test_gpus_are_pinned_and_never_shared(hub):
    one = {"user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 1,
                            "memory": "2Gi"}}
    assert hub.api("POST", "/users/student/servers/g1", one)[0] in (201, 202)
    assert hub.api("POST", "/users/researcher/servers/g2", one)[0] in (201, 202)
    hub.wait_ready("student", "g1")
    hub.wait_ready("researcher", "g2")
    pinned = {hub.server_env("student", "g1")["CUDA_VISIBLE_DEVICES"],
              hub.server_env("researcher", "g2")["CUDA_VISIBLE_DEVICES"]}
    assert pinned == {"0", "1"}

    status, body = hub.api("POST", "/users/researcher/servers/g3", one)
    if status in (201, 202):  # the refusal may arrive after the hub's 1s grace
        for _ in range(40):
            _, user = hub.api("GET", "/users/researcher")
            if "g3" not in user["servers"]:
                break
            time.sleep(0.25)
        assert "g3" not in user["servers"]
        assert "This machine does not have 1 free NVIDIA T4 16GB GPU right now (0 of 2 free)" in hub.log_tail(200)
    else:
        assert "This machine does not have 1 free NVIDIA T4 16GB GPU right now (0 of 2 free)" in body["message"]

    hub.stop_server("student", "g1")
    assert hub.api("POST", "/users/researcher/servers/g3", one)[0] in (201, 202)
    hub.wait_ready("researcher", "g3")
    assert hub.server_env("researcher", "g3")["CUDA_VISIBLE_DEVICES"] in {"0", "1"} - {
        hub.server_env("researcher", "g2")["CUDA_VISIBLE_DEVICES"]}
    hub.stop_server("researcher", "g2")
    hub.stop_server("researcher", "g3")
