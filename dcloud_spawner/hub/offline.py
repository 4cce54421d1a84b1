"""A JupyterHub user and hub for running a spawner outside a hub (``dcloud render``, tests).

Only the attributes spawners read are present; nothing here talks to a hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OfflineGroup:
    name: str


@dataclass
class OfflineUser:
    """The parts of a JupyterHub ``User`` a spawner reads: name, id, url and groups."""

    name: str
    group_names: Sequence[str] = ()
    id: int = 0
    groups: list[OfflineGroup] = field(init=False)

    def __post_init__(self) -> None:
        self.groups = [OfflineGroup(g) for g in self.group_names]

    @property
    def url(self) -> str:
        return f"/user/{self.name}/"


def offline_hub() -> object:
    """JupyterHub's own ``Hub`` description, as Zero to JupyterHub's hub Service exposes it."""
    from jupyterhub.objects import Hub

    return Hub(ip="hub", port=8081, base_url="/hub/")
