"""A real JupyterHub running `dcloud demo` (local backend), for REST and browser tests."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class DemoHub:
    url: str
    token: str
    password: str
    state: Path
    process: subprocess.Popen
    admin_password: str = ""  # the hub admin's, where the hub keeps it apart (SharedPasswordAuthenticator)

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/hub/api{path}", data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        """GET a page through the proxy (``/hub/...`` or ``/user/...``) with a token (default: the hub's)."""
        request = urllib.request.Request(f"{self.url}{path}",
                                         headers={"Authorization": f"token {token or self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, user: str, server: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, model = self.api("GET", f"/users/{user}")
            entry = (model or {}).get("servers", {}).get(server)
            if entry and entry.get("ready"):
                return entry
            if entry is None and time.monotonic() > deadline - timeout + 5:
                _, model = self.api("GET", f"/users/{user}")
            time.sleep(0.5)
        raise TimeoutError(f"{user}/{server} did not become ready; log: {self.log_tail()}")

    def stop_server(self, user: str, server: str, timeout: float = 60) -> None:
        self.api("DELETE", f"/users/{user}/servers/{server}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, model = self.api("GET", f"/users/{user}")
            if server not in (model or {}).get("servers", {}):
                return
            time.sleep(0.3)
        raise TimeoutError(f"{user}/{server} did not stop")

    def server_env(self, user: str, server: str) -> dict[str, str]:
        """The environment of the running server process, read from /proc."""
        _, model = self.api("GET", f"/users/{user}?include_stopped_servers=0")
        pid = model["servers"][server]["state"]["pid"]
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def log_tail(self, lines: int = 40) -> str:
        log = self.state / "hub.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def start_demo_hub(state: Path, simulate_gpus: str = "") -> DemoHub:
    port = free_port()
    token = secrets.token_hex(16)
    password = secrets.token_hex(8)
    admin_password = secrets.token_hex(16)
    env = {**os.environ, "DCLOUD_DEMO_DIR": str(state), "DCLOUD_DEMO_API_TOKEN": token,
           "DCLOUD_DEMO_ADMIN_PASSWORD": admin_password}
    argv = [sys.executable, "-m", "dcloud_spawner.cli", "demo", "--port", str(port), f"--password={password}"]
    if simulate_gpus:
        argv += ["--simulate-gpus", simulate_gpus]
    hub = launch_hub(argv, state, env, token, password, port)
    hub.admin_password = admin_password
    return hub


def launch_hub(argv: list[str], state: Path, env: dict[str, str], token: str, password: str,
               port: int) -> DemoHub:
    """Start a hub process (logging to state/hub.log) and wait until its API answers."""
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / "hub.log", "w")  # lives as long as the hub
    process = subprocess.Popen(argv, cwd=state, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    hub = DemoHub(f"http://127.0.0.1:{port}", token, password, state, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hub exited: {hub.log_tail()}")
        try:
            if hub.api("GET", "/")[0] == 200:
                return hub
        except OSError:
            pass
        time.sleep(0.3)
    stop_demo_hub(hub)
    raise RuntimeError(f"hub did not answer: {hub.log_tail()}")


def stop_demo_hub(hub: DemoHub) -> None:
    if hub.process.poll() is None:
        os.killpg(hub.process.pid, signal.SIGTERM)
        try:
            hub.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(hub.process.pid, signal.SIGKILL)
            hub.process.wait()
