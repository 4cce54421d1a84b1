"""The demo's proxy, as a real process between a client and a slow event stream.

JupyterHub's spawn-progress page is such a stream; it stays open while a user waits (for a
package install, for a GPU in the line), so the proxy must pass each event on at once and must
not cut the stream at tornado's 20-second default.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.hub import free_port

GAP = 22.0  # seconds between the two events: past tornado's default request_timeout (20 s)


class SlowEvents(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for number, pause in ((1, 0.0), (2, GAP)):
            time.sleep(pause)
            body = f"data: {number}\n\n".encode()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxied() -> Iterator[str]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowEvents)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, api_port = free_port(), free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "dcloud_spawner.demo.proxy", "--ip", "127.0.0.1", "--port", str(port),
         "--api-ip", "127.0.0.1", "--api-port", str(api_port),
         "--default-target", f"http://127.0.0.1:{upstream.server_address[1]}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/hub/api/users/ada/server/progress"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proxy.poll() is None, proxy.stderr.read() if proxy.stderr else ""
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/routes", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("the demo proxy did not answer in 30 s")
        yield url
    finally:
        proxy.terminate()
        proxy.wait(10)
        upstream.shutdown()
        upstream.server_close()


def test_a_long_event_stream_passes_whole_and_as_it_comes(proxied: str) -> None:
    began = time.monotonic()
    arrivals: list[tuple[str, float]] = []
    with urllib.request.urlopen(proxied, timeout=60) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                arrivals.append((line[5:].strip(), time.monotonic() - began))
    assert [event for event, _ in arrivals] == ["1", "2"], arrivals
    assert arrivals[0][1] < 5, f"the first event waited for the rest: {arrivals}"
    assert arrivals[1][1] >= GAP - 1, arrivals
