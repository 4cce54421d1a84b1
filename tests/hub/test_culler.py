"""dcloud_spawner.culler: the GPU-aware arbiter, its config file, and the real culler on a real hub."""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from jupyterhub.scopes import expand_scopes
from jupyterhub_idle_culler import IdleCuller, cull_idle
from traitlets.config import Config

from dcloud_spawner.hub.culler import (
    CULLER_SCOPES,
    gpu_aware_arbiter,
    holds_gpu,
    require_arbiter_hook,
    seconds_from_env,
)
from tests.conftest import ROOT
from tests.support.hub import start_demo_hub, stop_demo_hub

CULLER_CONFIG = ROOT / "hub_config" / "idle_culler_config.py"
HUB_CONFIG = ROOT / "hub_config" / "jupyterhub_config.py"

GPU_SERVER = {"name": "train", "user_options": {
    "environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 4, "memory": "16Gi",
    "datasets": [], "packages": []}}
CPU_SERVER = {"name": "explore", "user_options": {
    "environment": "scipy", "cpu": 2, "memory": "8Gi", "datasets": [], "packages": []}}

HOUR = 3600


def idle(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# --- which servers hold a GPU ----------------------------------------------------------


@pytest.mark.parametrize("server, expected", [
    (GPU_SERVER, True),
    (CPU_SERVER, False),
    ({"name": "", "user_options": {"environment": "pytorch", "gpu": {"type": "a100", "count": 4}}}, True),
    ({"name": "", "user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 0}}}, False),
    ({"name": "", "user_options": {}}, False),
    ({"name": "", "user_options": None}, False),
    ({"name": ""}, False),
])
def test_holds_gpu_reads_the_stored_options(server, expected):
    assert holds_gpu(server) is expected


# --- the arbiter ---------------------------------------------------------------------


@pytest.mark.parametrize("server, inactive, culled", [
    (GPU_SERVER, idle(59 * 60), False),
    (GPU_SERVER, idle(HOUR), True),
    (GPU_SERVER, idle(2 * HOUR), True),
    (CPU_SERVER, idle(2 * HOUR), False),
    (CPU_SERVER, idle(8 * HOUR - 1), False),
    (CPU_SERVER, idle(8 * HOUR), True),
    (GPU_SERVER, None, False),
    (CPU_SERVER, None, False),
])
def test_gpu_servers_get_the_shorter_timeout(server, inactive, culled):
    arbiter = gpu_aware_arbiter(HOUR, cpu_timeout=8 * HOUR)
    assert arbiter(inactive=inactive, inactive_limit=8 * HOUR, server=server) is culled


def test_server_without_user_options_is_a_cpu_server_and_nothing_is_logged(caplog):
    arbiter = gpu_aware_arbiter(HOUR)
    caplog.set_level(logging.DEBUG)
    bare = {"name": "", "last_activity": None}
    assert arbiter(inactive=idle(2 * HOUR), inactive_limit=8 * HOUR, server=bare) is False
    assert arbiter(inactive=idle(8 * HOUR), inactive_limit=8 * HOUR, server=bare) is True
    assert caplog.records == []


def test_gpu_server_never_outlives_a_cpu_server():
    # The culler started with a --timeout below the GPU timeout: that limit wins for both.
    arbiter = gpu_aware_arbiter(2 * HOUR)
    assert arbiter(inactive=idle(HOUR), inactive_limit=HOUR, server=GPU_SERVER) is True
    assert arbiter(inactive=idle(HOUR), inactive_limit=HOUR, server=CPU_SERVER) is True


def test_arbiter_takes_the_culler_s_keyword_arguments_and_ignores_new_ones():
    arbiter = gpu_aware_arbiter(HOUR)
    assert arbiter(inactive=idle(HOUR), inactive_limit=8 * HOUR, server=GPU_SERVER, future_field=1) is True


@pytest.mark.parametrize("gpu_timeout, cpu_timeout, message", [
    (0, None, "gpu_timeout must be a positive number of seconds, not 0"),
    (-60, None, "gpu_timeout must be a positive number of seconds, not -60"),
    (True, None, "gpu_timeout must be a positive number of seconds, not True"),
    (1.5, None, "gpu_timeout must be a positive number of seconds, not 1.5"),
    (HOUR, HOUR, "gpu_timeout (3600 s) must be shorter than the CPU timeout (3600 s)"),
    (2 * HOUR, HOUR, "gpu_timeout (7200 s) must be shorter than the CPU timeout (3600 s)"),
])
def test_gpu_timeout_is_validated(gpu_timeout, cpu_timeout, message):
    with pytest.raises(ValueError) as info:
        gpu_aware_arbiter(gpu_timeout, cpu_timeout=cpu_timeout)
    assert str(info.value) == message


# --- configuration helpers ------------------------------------------------------------


def test_seconds_from_env():
    assert seconds_from_env("T", 300, {}) == 300
    assert seconds_from_env("T", 300, {"T": ""}) == 300
    assert seconds_from_env("T", 300, {"T": " 90 "}) == 90
    with pytest.raises(ValueError, match=r"^T must be a whole number of seconds, not '1h'$"):
        seconds_from_env("T", 300, {"T": "1h"})
    with pytest.raises(ValueError, match=r"^T must be a positive number of seconds, not 0$"):
        seconds_from_env("T", 300, {"T": "0"})


def test_installed_culler_has_the_arbiter_hook(monkeypatch):
    require_arbiter_hook()
    older = [name for name in IdleCuller.class_trait_names(config=True) if name != "cull_arbiter_hook"]
    monkeypatch.setattr(IdleCuller, "class_trait_names", classmethod(lambda cls, **_: older))
    with pytest.raises(RuntimeError, match=r"no cull_arbiter_hook, .* jupyterhub-idle-culler 2\.0 or newer$"):
        require_arbiter_hook()


def load_culler_config(monkeypatch, **env: str) -> IdleCuller:
    """The IdleCuller as `python -m jupyterhub_idle_culler --config=...` configures it."""
    for name in ("DCLOUD_CULL_TIMEOUT", "DCLOUD_CULL_GPU_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    culler = IdleCuller()
    culler.load_config_file(str(CULLER_CONFIG))
    return culler


def test_config_file_defaults(monkeypatch):
    culler = load_culler_config(monkeypatch)
    assert culler.timeout == 8 * HOUR
    assert culler.cull_every == 300
    hook = culler.cull_arbiter_hook
    assert hook.gpu_timeout == HOUR
    assert hook(inactive=idle(HOUR), inactive_limit=culler.timeout, server=GPU_SERVER) is True
    assert hook(inactive=idle(HOUR), inactive_limit=culler.timeout, server=CPU_SERVER) is False


def test_config_file_reads_the_environment(monkeypatch):
    culler = load_culler_config(monkeypatch, DCLOUD_CULL_TIMEOUT="7200", DCLOUD_CULL_GPU_TIMEOUT="900")
    assert culler.timeout == 7200
    assert culler.cull_arbiter_hook.gpu_timeout == 900


@pytest.mark.parametrize("env, reason", [
    ({"DCLOUD_CULL_GPU_TIMEOUT": "28800"}, "gpu_timeout (28800 s) must be shorter than the CPU timeout (28800 s)"),
    ({"DCLOUD_CULL_TIMEOUT": "8h"}, "DCLOUD_CULL_TIMEOUT must be a whole number of seconds, not '8h'"),
])
def test_config_file_exits_rather_than_culling_on_the_defaults(monkeypatch, env, reason):
    # traitlets only logs an ordinary exception from a config file; SystemExit stops the culler.
    with pytest.raises(SystemExit) as info:
        load_culler_config(monkeypatch, **env)
    assert str(info.value) == f"dcloud idle culler: {reason}"


# --- hub_config/jupyterhub_config.py -------------------------------------------------------


def load_hub_config(monkeypatch, c: Config | None = None, **env: str) -> Config:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    c = c if c is not None else Config()
    runpy.run_path(str(HUB_CONFIG), init_globals={"get_config": lambda: c})
    return c


def hub_services_and_roles(c: Config) -> tuple[list[dict], list[dict]]:
    from jupyterhub.app import JupyterHub

    hub = JupyterHub(config=c)
    return hub.services, hub.load_roles


def test_hub_config_runs_the_culler_as_a_service(monkeypatch):
    monkeypatch.delenv("DCLOUD_CULL_TIMEOUT", raising=False)
    c = load_hub_config(monkeypatch, DCLOUD_CULL_GPU_TIMEOUT="1800")
    services, roles = hub_services_and_roles(c)
    (service,) = [s for s in services if s["name"] == "dcloud-idle-culler"]
    assert service["command"] == [sys.executable, "-m", "jupyterhub_idle_culler", f"--config={CULLER_CONFIG}"]
    assert service["environment"] == {"DCLOUD_CULL_GPU_TIMEOUT": "1800"}
    (role,) = [r for r in roles if r["name"] == "dcloud-idle-culler"]
    assert role["scopes"] == list(CULLER_SCOPES)
    assert role["services"] == ["dcloud-idle-culler"]


def test_hub_config_adds_to_services_and_roles_already_configured(monkeypatch):
    c = Config()
    c.JupyterHub.services = [{"name": "other", "url": "http://127.0.0.1:10101"}]
    c.JupyterHub.load_roles = [{"name": "other", "scopes": ["read:users"], "services": ["other"]}]
    services, roles = hub_services_and_roles(load_hub_config(monkeypatch, c))
    assert [s["name"] for s in services] == ["other", "dcloud", "dcloud-idle-culler"]
    assert [r["name"] for r in roles] == ["other", "dcloud-admin", "dcloud-idle-culler"]


def test_culler_scopes_are_jupyterhub_scopes():
    from jupyterhub.scopes import scope_definitions

    assert set(CULLER_SCOPES) <= set(scope_definitions)
    # user_options come with read:servers; the server's spawner state is not needed.
    assert "admin:server_state" not in CULLER_SCOPES


# --- the real culler against a real hub --------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_demo_hub(tmp_path_factory.mktemp("culler"), simulate_gpus="Tesla T4")
    yield hub
    stop_demo_hub(hub)


def seconds_idle(server: dict) -> float:
    last = datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - last).total_seconds()


def get_as(hub, token: str, path: str) -> dict:
    request = urllib.request.Request(f"{hub.url}/hub/api{path}", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_gone(hub, user: str, server: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, model = hub.api("GET", f"/users/{user}")
        if server not in model["servers"]:
            return True
        time.sleep(0.3)
    return False


@pytest.fixture
def idle_servers(hub):
    """A GPU server (student/gpu) and a CPU server (guest/cpu), both idle for 2 s or more,
    and a token holding exactly the culler's scopes; all removed afterwards."""
    gpu = {"user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}}}
    cpu = {"user_options": {"environment": "scipy"}}
    assert hub.api("POST", "/users/student/servers/gpu", gpu)[0] in (201, 202)
    assert hub.api("POST", "/users/guest/servers/cpu", cpu)[0] in (201, 202)
    # The token is issued through the demo's automation service, which has `tokens`;
    # its scopes are the role that the hub config gives the culler service.
    status, token = hub.api("POST", "/users/admin/tokens", {"scopes": list(CULLER_SCOPES), "note": "culler"})
    assert status == 201, token
    try:
        hub.wait_ready("student", "gpu")
        hub.wait_ready("guest", "cpu")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, student = hub.api("GET", "/users/student")
            if seconds_idle(student["servers"]["gpu"]) >= 2:
                break
            time.sleep(0.5)
        yield token
    finally:
        hub.api("DELETE", f"/users/admin/tokens/{token['id']}")
        for user, server in (("student", "gpu"), ("guest", "cpu")):
            hub.api("DELETE", f"/users/{user}/servers/{server}")
            assert wait_gone(hub, user, server), f"{user}/{server} did not stop"


def assert_only_the_gpu_server_was_stopped(hub) -> None:
    assert wait_gone(hub, "student", "gpu"), "the idle GPU server is still running"
    _, guest = hub.api("GET", "/users/guest")
    assert guest["servers"]["cpu"]["ready"] is True
    assert guest["servers"]["cpu"]["user_options"]["environment"] == "scipy"


def test_culler_token_sees_user_options(hub, idle_servers):
    token = idle_servers
    # JupyterHub reports the scopes expanded (read:users:activity implies
    # read:users:name), plus the token's view of its own owner.
    assert {s for s in token["scopes"] if not s.endswith("!user=admin")} == set(expand_scopes(CULLER_SCOPES))
    servers = get_as(hub, token["token"], "/users/student")["servers"]
    assert servers["gpu"]["user_options"]["gpu"] == {"type": "t4", "count": 1}
    assert "state" not in servers["gpu"], "the culler's token should not read spawner state"


async def test_real_culler_stops_the_idle_gpu_server_and_keeps_the_cpu_server(hub, idle_servers, caplog):
    caplog.set_level(logging.INFO, logger="dcloud-test-culler")
    await cull_idle(
        url=f"{hub.url}/hub/api",
        api_token=idle_servers["token"],
        inactive_limit=HOUR,
        logger=logging.getLogger("dcloud-test-culler"),
        cull_arbiter=gpu_aware_arbiter(gpu_timeout=1),
    )
    culled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Culling server")]
    assert len(culled) == 1 and culled[0].startswith("Culling server student/gpu"), culled
    assert_only_the_gpu_server_was_stopped(hub)


def test_culler_command_with_the_config_file_stops_only_the_gpu_server(hub, idle_servers, tmp_path):
    # The command the hub runs for the dcloud-idle-culler service, with the token and
    # URL the hub would hand it, and a 1 s GPU timeout. It culls once at start.
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": idle_servers["token"], "JUPYTERHUB_API_URL": f"{hub.url}/hub/api",
           "DCLOUD_CULL_TIMEOUT": str(HOUR), "DCLOUD_CULL_GPU_TIMEOUT": "1"}
    log = tmp_path / "culler.log"
    with open(log, "w") as out:
        culler = subprocess.Popen([sys.executable, "-m", "jupyterhub_idle_culler", f"--config={CULLER_CONFIG}"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        gone = wait_gone(hub, "student", "gpu")
        assert gone, log.read_text()
        assert_only_the_gpu_server_was_stopped(hub)
        assert culler.poll() is None, log.read_text()
    finally:
        culler.terminate()
        culler.wait(timeout=10)
    assert "Culling server student/gpu" in log.read_text()
    assert "guest/cpu" not in log.read_text().replace("Not culling server guest/cpu", "")
