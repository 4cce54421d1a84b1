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


# What one audit line may quote: a refused request can carry megabytes of junk, and a log
# line must stay small whatever a user sends. JSON escapes control characters, so a value
# can never break the line or forge another.
MAX_REQUESTED_CHARS = 4096
MAX_FIELD_CHARS = 1024


def _opaque(value: Any) -> str:
    return f"<{type(value).__name__}>"


def bounded(value: Any, limit: int) -> Any:
    """``value`` as JSON data if it encodes in ``limit`` characters, else the start of its
    JSON text, clipped (encoded lazily: junk past the limit is never serialised)."""
    encoder = json.JSONEncoder(allow_nan=False, default=_opaque)
    chunks: list[str] = []
    length = 0
    try:
        for chunk in encoder.iterencode(value):
            chunks.append(chunk)
            length += len(chunk)
            if length > limit:
                return "".join(chunks)[: limit - 1] + "…"
    except (RecursionError, ValueError):  # absurdly deep, or NaN (not JSON)
        return _opaque(value)
    return json.loads("".join(chunks))


def record(event: str, user: str | None, server: str, groups: list[str], requested: Any,
           **fields: Any) -> None:
    """Write one audit line, bounded whatever the request held."""
    line = {"event": event, "user": user, "server": server, "groups": groups, **fields}
    line = {key: bounded(value, MAX_FIELD_CHARS) for key, value in line.items()}
    line["requested"] = bounded(requested, MAX_REQUESTED_CHARS)
    audit_log.info(json.dumps(line, sort_keys=True))
