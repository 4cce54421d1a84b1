"""The demo's proxy: the pip-installable configurable-http-proxy, streaming responses.

That package buffers each upstream response whole before sending it on, so JupyterHub's
spawn-progress event stream reaches the browser only when the spawn is over. This entry
point streams bodies chunk by chunk instead; everything else is the package's own CLI.
Used only where Node's configurable-http-proxy is not installed.
"""

from __future__ import annotations

from typing import Any

from configurable_http_proxy import cli, handlers
from tornado.httpclient import AsyncHTTPClient
from tornado.httputil import HTTPHeaders, parse_response_start_line

_SKIPPED = {"content-length", "transfer-encoding", "content-encoding", "connection"}


async def _streaming_call_proxy(self: Any, path: str | None = None) -> None:
    url = await self.get_target_url(path)
    if url is None:
        return
    request = self._get_proxy_request(url)
    if not self.proxy.proxy_timeout:
        # tornado's client ends any response after 20 s by default; a spawn's progress stream
        # stays open as long as the user waits (e.g. in the GPU queue), so no total limit
        request.request_timeout = 0
    lines: list[str] = []
    sent = {"headers": False}

    def on_header(line: str) -> None:
        if line.startswith("HTTP/"):
            lines.clear()  # a new response (e.g. after 100 Continue)
        lines.append(line)

    def send_headers() -> None:
        if sent["headers"] or not lines:
            return
        status = parse_response_start_line(lines[0].strip())
        if status.code < 200:
            return
        self.set_status(status.code, status.reason)
        headers = HTTPHeaders.parse("".join(lines[1:]))
        existing = {h[0].lower() for h in self._headers.get_all()}
        for key, value in headers.get_all():
            if key.lower() in _SKIPPED:
                continue
            if key.lower() in existing:
                self.set_header(key, value)
            else:
                self.add_header(key, value)
        sent["headers"] = True

    def on_chunk(chunk: bytes) -> None:
        send_headers()
        self.write(chunk)
        self.flush()

    request.header_callback = on_header
    request.streaming_callback = on_chunk
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except Exception as err:
        if not sent["headers"]:
            await self.handle_proxy_error(503, err)
        return
    if not sent["headers"]:
        if lines:
            send_headers()
        else:
            self.set_status(response.code)
    self.finish()


def main() -> None:
    handlers.ProxyHandler.call_proxy = _streaming_call_proxy
    cli.main()


if __name__ == "__main__":
    main()
