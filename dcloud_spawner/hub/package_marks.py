"""Which of a user's package environments its servers run on, told to the shared installer.

The installer (``core/package_envs.py``) never prunes an environment that a server's marker
names, unless the hub lists the marker's start as over. This is the hub's half: each start that
runs on a package environment gets a fresh token (the installer writes it into the server's
marker), and each start lists the tokens of the user's *other* servers whose starts are over.
A token is listed only once its start has ended (the server is not running, starting or
stopping, or it runs without packages now) and tokens never repeat, so the list is never wrong
for a start that began after it was made: nothing depends on clocks or on timing.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..core import package_envs

TOKEN = "dcloud_env_token"  # state keys; kept across stops (JupyterHub's clear_state leaves them)
HELD = "dcloud_env_held"


class PackageEnvHolder:
    """Spawner mixin: this server's hold on a package environment, and the user's others'."""

    # The token of this server's latest start that marked a package environment as in use, and
    # whether its current (or last) run is on it. Both stay in the state after a stop, so the
    # user's later starts, also after a hub restart, can list the token as over.
    dcloud_env_token: str | None = None
    dcloud_env_held: bool = False

    user: Any
    name: str

    def mark_package_env(self, uses: bool) -> dict[str, str]:
        """Begin this start's hold: ``uses`` (it runs on a package environment in the shared
        folder) makes a new token and returns the installer's environment for the marker; else
        the earlier start's marker is over, and nothing is returned."""
        self.dcloud_env_held = uses
        if not uses:
            return {}
        self.dcloud_env_token = secrets.token_hex(8)
        return package_envs.marker_env(self.name or "", self.dcloud_env_token, self.ended_package_starts())

    def ended_package_starts(self) -> list[str]:
        """The tokens of the user's other servers whose hold is over."""
        every = getattr(self.user, "all_spawners", None)  # JupyterHub's User; not outside a hub
        if every is None:
            return []
        ended = []
        for other in every():
            if (other.name or "") == (self.name or ""):
                continue
            # a Spawner object, or the database row of a server the hub holds none for (JupyterHub
            # drops the object at a stop); a row answers `active` False and is its own orm_spawner
            row = other.orm_spawner
            token = getattr(other, "dcloud_env_token", None) or (row.state or {}).get(TOKEN)
            running = other.active or row.server is not None
            if token and (not running or not getattr(other, "dcloud_env_held", True)):
                ended.append(token)
        return ended

    def package_env_state(self) -> dict[str, Any]:
        """The hold, for the spawner's state (at every save, running or not)."""
        return {TOKEN: self.dcloud_env_token, HELD: self.dcloud_env_held} if self.dcloud_env_token else {}

    def load_package_env_state(self, state: dict[str, Any]) -> None:
        token = state.get(TOKEN)
        if isinstance(token, str) and token.isalnum():  # the installer takes no other
            self.dcloud_env_token = token
            self.dcloud_env_held = state.get(HELD) is True
