"""The admin page: current GPU allocations by class, user and group, with a chart.

Served by the hub at /hub/dcloud/allocations (HTML) and /hub/dcloud/allocations.json;
hub admins only, everyone else gets 403. Enable it in jupyterhub_config.py::

    from dcloud_spawner.admin import handlers
    c.JupyterHub.extra_handlers = handlers()

(JupyterHub 3.1+ logs that extra_handlers is deprecated in favour of services; a service
runs in another process and could not read the hub's allocation ledger, so DCloud keeps
the page in the hub, next to /hub/metrics, whose numbers it matches.)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib.resources import files
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from tornado import web

from .metrics import allocations
from .quantity import format_memory

PAGE = (files("dcloud_spawner") / "templates" / "allocations.html").read_text(encoding="utf-8")


class AllocationsHandler(BaseHandler):
    """Hub admins see who holds which GPUs; anyone else is refused."""

    # read-only page and JSON: an admin's API token works as well as the login cookie
    _accept_token_auth = True

    def _data(self) -> tuple[Any, Any]:
        spawner = self.current_user.spawner  # any DCloud spawner knows the catalog and live data
        catalog = spawner.catalog
        availability = spawner.form_context().availability
        return catalog, allocations(catalog, availability)

    def _require_admin(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403)
        if not self.current_user.admin:
            raise web.HTTPError(403, "Only hub admins may see GPU allocations.")

    @web.authenticated
    async def get(self, fmt: str = "") -> None:
        self._require_admin()
        spawner = self.current_user.spawner
        await spawner.refresh_live_data()
        catalog, current = self._data()
        if fmt == ".json":
            payload = asdict(current)
            if current.availability is not None:
                payload["availability"] = {k: asdict(v) for k, v in current.availability.items()}
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(payload, sort_keys=True))
            return
        live = current.availability or {}
        scale = max([live[g.id].total for g in catalog.gpu_classes if g.id in live] +
                    [current.by_class.get(g.id, 0) for g in catalog.gpu_classes] + [1])
        rows = []
        for gpu in catalog.gpu_classes:
            held = current.by_class.get(gpu.id, 0)
            total = live[gpu.id].total if gpu.id in live else None
            free = live[gpu.id].free if gpu.id in live else None
            busy = (total - free) if total is not None else held
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

        template = self.settings["jinja2_env"].from_string(PAGE)
        ns = {**self.template_namespace, "xsrf_token": self.xsrf_token.decode("ascii")}
        self.write(await template.render_async(
            **ns, classes=rows, users=readable(current.by_user), groups=readable(current.by_group),
            unavailable=None if current.availability is not None
            else "Cluster-wide GPU availability is not known to the hub; only DCloud's own servers are counted.",
        ))


def handlers() -> list[tuple[str, type]]:
    """Tornado routes for ``c.JupyterHub.extra_handlers`` (mounted under /hub/)."""
    return [(r"/dcloud/allocations(\.json)?", AllocationsHandler)]
