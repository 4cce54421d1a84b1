"""The admin page: current GPU allocations by class, user and group, with a chart.

Served by DCloud's JupyterHub service (hub/service.py) at /services/dcloud/allocations (HTML)
and /services/dcloud/allocations.json to holders of the ``custom:dcloud-admin:read`` scope
(the ``dcloud-admin`` role, or an API token given that scope); everyone else gets 403.
Enable it in jupyterhub_config.py::

    from dcloud_spawner.hub.service import admin_role, admin_service
    admin_service(c)
    c.JupyterHub.load_roles.append(admin_role(users=["admin"]))

The service's server runs inside the hub process, so the page reads the hub's live state
(the allocation ledger, live availability, the Kueue view); docs/admin-service.md says why.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from tornado import web

from ..core.quantity import format_memory
from .form import templates
from .metrics import Allocations, allocations
from .service import ServicePage
from .state import hub_state


class AllocationsPage(ServicePage):
    """Who holds which GPUs, for holders of ``custom:dcloud-admin:read``."""

    async def get(self, fmt: str | None = None) -> None:
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
        self.write(self._page(catalog, current, catalog_error, queues))

    def _page(self, catalog: Any, current: Allocations, catalog_error: str | None,
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

        return templates.get_template("allocations.html").render(
            user=self.current_user["name"], hub_prefix=self.hub_prefix(), prefix=self.hub_auth.base_url,
            classes=rows, users=readable(current.by_user), groups=readable(current.by_group),
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

