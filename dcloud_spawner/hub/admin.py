"""The admin page: current GPU allocations by class, user and group, with a chart.

Served by the hub at /hub/dcloud/allocations (HTML) and /hub/dcloud/allocations.json to
whoever holds the ``read:servers`` scope for all servers (hub admins, or an API token or
service given that scope); everyone else gets 403. Enable it in jupyterhub_config.py::

    from dcloud_spawner.hub.admin import handlers
    c.JupyterHub.extra_handlers = handlers()

(JupyterHub 3.1+ logs that extra_handlers is deprecated in favour of services; a service
runs in another process and could not read the hub's allocation ledger, so DCloud keeps
the page in the hub, next to /hub/metrics, whose numbers it matches.)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from ..core.quantity import format_memory
from .form import templates
from .metrics import Allocations, allocations
from .state import hub_state


class AllocationsHandler(BaseHandler):
    """Who holds which GPUs, for holders of the unfiltered ``read:servers`` scope."""

    # read-only page and JSON: an API token with the scope works as well as the login cookie
    _accept_token_auth = True

    async def get(self, fmt: str = "") -> None:
        # an API client asking for JSON gets a JSON 403 rather than the login page
        if fmt == ".json" or self._logged_in():
            await self._show(fmt)

    @web.authenticated  # a browser without a login goes to the login page first (None)
    def _logged_in(self) -> bool:
        return True

    @needs_scope("read:servers")
    async def _show(self, fmt: str) -> None:
        state = hub_state()
        if state.live is not None:
            await state.live.refresh()
        catalog = state.catalog()
        if catalog is None:
            raise web.HTTPError(503, "No DCloud spawner has started in this hub yet.")
        current = allocations(catalog, state.ledger.claims,
                              state.live.availability(catalog) if state.live else None)
        queues = [asdict(row) for row in state.queues.rows(catalog)] \
            if state.queues is not None and catalog.queueing.enabled else None
        catalog_error = state.catalogs.error(state.catalog_path) if state.catalog_path else None
        if fmt == ".json":
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps({**json_payload(current, catalog_error), "queues": queues}, sort_keys=True))
            return
        self.write(await self._page(catalog, current, catalog_error, queues))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.request.path.endswith(".json"):  # errors as JupyterHub's REST API words them
            APIHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]
        else:
            super().write_error(status_code, **kwargs)

    async def _page(self, catalog: Any, current: Allocations, catalog_error: str | None,
                    queues: list[dict[str, Any]] | None) -> str:
        live = current.availability or {}
        scale = max([live[g.id].total for g in catalog.gpu_classes if g.id in live] +
                    [current.by_class.get(g.id, 0) for g in catalog.gpu_classes] + [1])
        rows = []
        for gpu in catalog.gpu_classes:
            held = current.by_class.get(gpu.id, 0)
            total = live[gpu.id].total if gpu.id in live else None
            free = live[gpu.id].free if gpu.id in live else None
            busy = (total - free) if total is not None and free is not None else held
            width = 480 / scale
            rows.append({
                "id": gpu.id, "name": gpu.display_name, "held": held,
                "free": "?" if free is None else free, "total": "?" if total is None else total,
                "busy": busy, "held_w": round(held * width), "busy_w": round(busy * width),
                "total_w": round((total if total is not None else held) * width),
                "label": f"{held} held, {free} free of {total}" if total is not None else f"{held} held",
            })

        def readable(totals: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, Any]]]:
            return [(name, {**t, "cpu": f"{t['cpu']:g}", "memory": format_memory(int(t["memory"]))})
                    for name, t in sorted(totals.items())]

        # the hub's own page layout around DCloud's table (its jinja environment has page.html)
        source = templates.loader.get_source(templates, "allocations.html")[0]  # type: ignore[union-attr]
        template = self.settings["jinja2_env"].from_string(source)
        ns = {**self.template_namespace, "xsrf_token": self.xsrf_token.decode("ascii")}
        return await template.render_async(
            **ns, classes=rows, users=readable(current.by_user), groups=readable(current.by_group),
            queues=queues, gpu_ids=[g.id for g in catalog.gpu_classes],
            catalog_error=catalog_error and CATALOG_WARNING.format(path=hub_state().catalog_path, error=catalog_error),
            unavailable=None if current.availability is not None
            else "Cluster-wide GPU availability is not known to the hub; only DCloud's own servers are counted.",
        )


CATALOG_WARNING = "The catalog file {path} is invalid, so the hub still serves its last valid version: {error}"


def json_payload(current: Allocations, catalog_error: str | None) -> dict[str, Any]:
    """The JSON answer: the allocations, and what is wrong with the catalog file if anything."""
    payload = asdict(current)
    if current.availability is not None:
        payload["availability"] = {k: asdict(v) for k, v in current.availability.items()}
    payload["catalog_error"] = catalog_error
    return payload


def handlers() -> list[tuple[str, type]]:
    """Tornado routes for ``c.JupyterHub.extra_handlers`` (mounted under /hub/)."""
    return [(r"/dcloud/allocations(\.json)?", AllocationsHandler)]
