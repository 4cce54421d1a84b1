"""The demo hub (local backend) killed with SIGKILL and started again on the same state.

As in a crash, only the hub's own process dies: its proxy and the single-user servers
(each in a session of its own) live on. The new hub must be reachable at the address the
surviving servers were given, so they still answer through the proxy, and it must count
each of them exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from dcloud_spawner.demo import internal_ports
from tests.support.hub import DemoHub, start_demo_hub, stop_demo_hub

GPU = {"user_options": {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 1, "memory": "2Gi"}}




def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and ") Z " in status.read_text())


def allocations(hub: DemoHub) -> dict:
    status, body = hub.get("/services/dcloud/allocations.json")
    assert status == 200, body
    return json.loads(body)


def test_servers_survive_a_killed_hub_and_are_counted_once(tmp_path):
    state = tmp_path / "demo"
    started: list[int] = []  # every process this test may leave behind
    first = start_demo_hub(state, simulate_gpus="Tesla T4,Tesla T4")
    second = None
    try:
        assert first.api("POST", "/users/student/servers/g", GPU)[0] in (201, 202)
        first.wait_ready("student", "g")
        _, model = first.api("GET", "/users/student")
        server_pid = model["servers"]["g"]["state"]["pid"]
        started += [server_pid, int((state / "proxy.pid").read_text())]
        pinned = first.server_env("student", "g")["CUDA_VISIBLE_DEVICES"]
        assert first.get("/user/student/g/api/status")[0] == 200
        assert allocations(first)["by_class"]["t4"] == 1

        os.kill(first.process.pid, signal.SIGKILL)  # the hub alone, as a crash would
        first.process.wait()
        assert alive(server_pid)

        second = start_demo_hub(state, simulate_gpus="Tesla T4,Tesla T4")  # a new API token too
        second.wait_ready("student", "g")
        # the server checks the new token with the hub: it must reach the hub where it did
        deadline = time.monotonic() + 30
        while (status := second.get("/user/student/g/api/status")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200, second.log_tail(60)

        current = allocations(second)
        assert current["by_class"]["t4"] == 1  # adopted once: neither lost nor counted twice
        assert [(s["user"], s["server"]) for s in current["servers"]] == [("student", "g")], current["servers"]
        assert current["availability"]["t4"]["free"] == 1

        # the surviving server's GPU stays its own: the next GPU server gets the other one
        assert second.api("POST", "/users/researcher/servers/g2", GPU)[0] in (201, 202)
        second.wait_ready("researcher", "g2")
        assert second.server_env("researcher", "g2")["CUDA_VISIBLE_DEVICES"] == {"0": "1", "1": "0"}[pinned]
        assert allocations(second)["by_class"]["t4"] == 2
        _, model = second.api("GET", "/users/researcher")
        started.append(model["servers"]["g2"]["state"]["pid"])
        second.stop_server("researcher", "g2")
        second.stop_server("student", "g")
        assert not alive(server_pid)
    finally:
        if second is not None:
            stop_demo_hub(second)
        stop_demo_hub(first)
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_internal_ports_are_kept_and_chosen_anew_only_when_taken(tmp_path):
    first = internal_ports(tmp_path)
    assert internal_ports(tmp_path) == first  # a restart listens where the servers call
    assert json.loads((tmp_path / "ports.json").read_text()) == first
    with socket.socket() as squatter:  # another program took the hub's port meanwhile
        squatter.bind(("127.0.0.1", first["hub"]))
        squatter.listen(1)
        moved = internal_ports(tmp_path)
    assert moved["hub"] != first["hub"] and moved["proxy_api"] == first["proxy_api"]
    assert internal_ports(tmp_path) == moved
    (tmp_path / "ports.json").write_text("not json")
    assert set(internal_ports(tmp_path)) == {"hub", "proxy_api"}
