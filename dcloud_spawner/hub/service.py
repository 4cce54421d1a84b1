"""DCloud's admin pages as a JupyterHub service whose web server runs inside the hub process.

JupyterHub's way to add pages is a *service* (``c.JupyterHub.services``): the proxy routes
``/services/<name>/`` to its URL, the hub logs browsers in to it by OAuth, and its handlers
admit whoever holds the right scopes (``jupyterhub.services.auth.HubOAuthenticated``). The
pages read the hub's live in-memory state (``hub_state()``: the claims ledger, live GPU
availability, the Kueue view), which another process cannot see, so DCloud's service is
not a subprocess: ``admin_service(c)`` in jupyterhub_config.py starts its small tornado
server on the hub's own event loop, at config time, before the hub waits for its services.

Who may read the pages is the custom scope ``custom:dcloud-admin:read``, granted by a role
(``admin_role``); an API token holding it gets the JSON. See docs/admin-service.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from jupyterhub.utils import url_path_join
from tornado import netutil, web
from tornado.httpserver import HTTPServer
from tornado.log import access_log
from traitlets.config import LazyConfigValue

SERVICE_NAME = "dcloud"
ADMIN_SCOPE = "custom:dcloud-admin:read"
ADMIN_ROLE = "dcloud-admin"
SCOPE_DESCRIPTION = "Read DCloud's admin pages: GPU allocations by class, user and group, and the queues."
# The pages the service serves, below /services/<name>/ (its index lists them).
PAGES = {"allocations": "GPU allocations by class, user and group; .json for the same as JSON"}

log = logging.getLogger("JupyterHub")


def admin_role(users: Iterable[str] = (), groups: Iterable[str] = (), name: str = SERVICE_NAME) -> dict[str, Any]:
    """A ``load_roles`` entry letting ``users`` and ``groups`` read the service's pages.

    Besides the custom scope it carries ``access:services!service=<name>``, without which
    the hub refuses to log a browser in to the service at all.
    """
    return {
        "name": ADMIN_ROLE,
        "description": SCOPE_DESCRIPTION,
        "scopes": [ADMIN_SCOPE, f"access:services!service={name}"],
        "users": sorted(users),
        "groups": sorted(groups),
    }


def admin_service(c: Any, name: str = SERVICE_NAME, url: str = "http://127.0.0.1:0",
                  bind_url: str | None = None) -> dict[str, Any]:
    """Declare DCloud's service in the JupyterHub config ``c`` and start its server.

    The entry ``name`` of ``c.JupyterHub.services`` is used if there is one (the Zero to
    JupyterHub chart puts ``hub.services.<name>`` there, with its token), else added.
    ``url`` is where the proxy reaches the service; port 0 picks a free port now (the hub
    and the proxy on one machine). ``bind_url`` is where the server listens (default: the
    address in ``url``, or every interface when ``url`` names a host such as ``hub``).
    Called outside a running hub (``jupyterhub --generate-config``, a test reading the
    config) the entry is filled in but no server is started.
    """
    services = c.JupyterHub.services
    if isinstance(services, LazyConfigValue):  # nothing set yet, or only appended to
        services = c.JupyterHub.services = services.get_value([])
    spec = next((s for s in services if s.get("name") == name), None)
    if spec is None:
        spec = {"name": name}
        services.append(spec)
    spec.setdefault("url", url)
    if not spec.get("api_token"):
        spec["api_token"] = secrets.token_hex(32)  # identifies the service to the hub (OAuth client secret)
    spec.setdefault("oauth_no_confirm", True)  # part of the hub: no "authorize this service?" page
    spec.setdefault("oauth_client_allowed_scopes", [ADMIN_SCOPE])
    spec.setdefault("display", True)  # listed in the hub's Services menu for whoever may access it
    spec.setdefault("info", {"pages": {f"/services/{name}/{page}": what for page, what in PAGES.items()}})
    scopes = c.JupyterHub.custom_scopes
    if isinstance(scopes, LazyConfigValue):
        scopes = scopes.get_value({})
    c.JupyterHub.custom_scopes = {**scopes, ADMIN_SCOPE: {"description": SCOPE_DESCRIPTION}}

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return spec  # not inside a starting hub: nothing to serve
    server = _servers.get(name)
    if server is None:
        server = _servers[name] = AdminServer(name, spec)
        server.listen(bind_url or _bind_address(spec["url"]))
    server.spec = spec
    spec["url"] = server.url
    return spec


_servers: dict[str, AdminServer] = {}


def _bind_address(url: str) -> str:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    is_ip = re.fullmatch(r"[\d.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", host) is not None
    port = parsed.port if parsed.port is not None else {"https": 443}.get(parsed.scheme, 80)
    host = (f"[{host}]" if ":" in host else host) if is_ip else ""
    return f"{parsed.scheme}://{host}:{port}"


class AdminServer:
    """The service's tornado server, in the hub process; its OAuth client is made from the
    running hub at the first request (the hub's addresses are known only then)."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.url = spec["url"]
        self._hub_auth: HubOAuth | None = None
        pattern = rf"(?:/.*)?/services/{re.escape(name)}"
        from .admin import AllocationsPage  # the pages import this module's handler base

        self.app = web.Application(
            [
                (rf"{pattern}/oauth_callback", OAuthCallback, {"server": self}),
                (rf"{pattern}/?", IndexPage, {"server": self}),
                (rf"{pattern}/allocations(\.json)?", AllocationsPage, {"server": self}),
            ],
            cookie_secret=secrets.token_bytes(32),  # OAuth state and token cookies; a restart logs in again
            log_function=_log_request,
        )

    def listen(self, bind_url: str) -> None:
        parsed = urlparse(bind_url)
        sockets = netutil.bind_sockets(parsed.port or 0, address=parsed.hostname or None)
        HTTPServer(self.app, xheaders=True).add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        public = urlparse(self.url)
        if public.port == 0:  # the one just chosen
            self.url = public._replace(netloc=f"{public.hostname}:{port}").geturl()
        log.info("DCloud service %s listening on %s port %d, proxied at /services/%s/",
                 self.name, parsed.hostname or "every interface", port, self.name)

    @property
    def hub_auth(self) -> HubOAuth:
        if self._hub_auth is None:
            from jupyterhub.app import JupyterHub

            self._hub_auth = hub_oauth(JupyterHub.instance(), self.name, self.spec)
        return self._hub_auth

    @hub_auth.setter
    def hub_auth(self, value: HubOAuth) -> None:
        self._hub_auth = value


def hub_oauth(app: Any, name: str, spec: dict[str, Any]) -> HubOAuth:
    """The service's OAuth client, talking to the hub's API on the hub's own bind address."""
    bind = urlparse(app.hub.bind_url)
    if bind.scheme.startswith("http+unix"):
        api_url = app.hub.api_url
    else:
        host = bind.hostname if bind.hostname not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        api_url = f"{bind.scheme}://{host}:{bind.port}" + url_path_join(app.hub.base_url, "api")
    ssl = {"certfile": app.internal_ssl_cert, "keyfile": app.internal_ssl_key,
           "client_ca": app.internal_ssl_ca} if app.internal_ssl else {}
    return HubOAuth(
        api_token=spec["api_token"],
        api_url=api_url,
        oauth_client_id=spec.get("oauth_client_id") or f"service-{name}",
        base_url=url_path_join(app.base_url, "services", name) + "/",
        hub_prefix=app.hub.base_url,
        cache_max_age=60,  # a revoked role stops working within a minute
        **ssl,
    )


def _log_request(handler: web.RequestHandler) -> None:
    status = handler.get_status()
    level = access_log.info if status < 400 else access_log.warning
    level("%d %s %s (dcloud service) %.2fms", status, handler.request.method, handler.request.uri,
          1000 * handler.request.request_time())


class ServiceHandler(HubOAuthenticated, web.RequestHandler):
    """Identifies the hub user or service behind a request, without blocking the hub.

    ``HubAuthenticated.get_current_user`` asks the hub's API synchronously from a thread,
    which inside the hub would wait on the very loop that must answer; ``prepare`` asks
    asynchronously instead and sets ``current_user`` (None when unknown or not allowed).
    """

    hub_scopes = {ADMIN_SCOPE}

    def initialize(self, server: AdminServer) -> None:
        self.server = server
        self.refused: dict[str, Any] | None = None  # identified, but without the scope

    @property
    def hub_auth(self) -> HubOAuth:  # type: ignore[override]
        return self.server.hub_auth

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        allowed = None
        if model:
            try:
                allowed = self.check_hub_user(model)
            except UserNotAllowed:
                self.refused = model
        self._hub_auth_user_cache = allowed
        self.current_user = allowed


class OAuthCallback(ServiceHandler, HubOAuthCallbackHandler):
    """Where the hub sends a browser back with its OAuth code."""


class ServicePage(ServiceHandler):
    """A page for holders of ``custom:dcloud-admin:read``: others get 403; a browser
    without a login goes through the hub's login first, an API client gets JSON errors."""

    def wants_json(self) -> bool:
        return self.request.path.endswith(".json")

    async def prepare(self) -> None:
        await super().prepare()
        if self.current_user:
            return
        if self.refused is not None:
            kind = self.refused.get("kind", "user")
            raise web.HTTPError(403, f"The {kind} {self.refused['name']} does not hold the scope {ADMIN_SCOPE}.")
        if self.wants_json():
            raise web.HTTPError(403, "Missing or invalid credentials.")
        self.redirect(self.get_login_url())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = (exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message
                   else self._reason)
        if self.wants_json():  # as JupyterHub's REST API words its errors
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": status_code, "message": message}))
            return
        from .form import templates

        self.finish(templates.get_template("service_error.html").render(
            status_code=status_code, message=message, hub_prefix=self.hub_prefix()))

    def hub_prefix(self) -> str:
        try:
            return self.hub_auth.hub_prefix
        except Exception:  # no hub to ask (a test without one)
            return "/hub/"


class IndexPage(ServicePage):
    """``/services/dcloud/``, where the hub's Services menu points: the list of pages."""

    def get(self) -> None:
        from .form import templates

        prefix = self.hub_auth.base_url
        self.finish(templates.get_template("service_index.html").render(
            user=self.current_user["name"], hub_prefix=self.hub_prefix(), prefix=prefix,
            pages=[(url_path_join(prefix, page), what) for page, what in PAGES.items()]))
