"""The audit stream: one JSON object per line on the hub's stderr for every spawn,
refusal and stop (who, which groups, what was asked, what was granted or why not).

Plain ``logging`` rather than jupyter_events: the records are flat, operators ship the
hub's stderr as it is, and a bare JSON line per event is what log pipelines parse.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

audit_log = logging.getLogger("dcloud.audit")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (it may be replaced)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def install_handler() -> None:
    """Send audit records to stderr as bare lines, whatever the hub's log format (once)."""
    if any(isinstance(h, _StderrHandler) for h in audit_log.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False  # the hub's own handlers would wrap the JSON in their format


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:500]


def record(event: str, user: str | None, server: str, groups: list[str], requested: Any,
           **fields: Any) -> None:
    """Write one audit line."""
    line = {"event": event, "user": user, "server": server, "groups": groups,
            "requested": _json_safe(requested), **fields}
    audit_log.info(json.dumps(line, sort_keys=True, default=str))
