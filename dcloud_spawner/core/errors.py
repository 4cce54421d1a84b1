"""Refusals: why DCloud will not start a server, as one sentence a user can act on.

Every refusal (invalid request, no capacity, over quota) is a :class:`Refusal`. Like
JupyterHub's ``SpawnException`` it carries ``jupyterhub_message`` (what the form, the REST
400 body and the progress page show) and a ``reason`` (the label of refusal metrics).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any


class Refusal(Exception):
    """A spawn DCloud refuses; ``sentence`` says why and what is allowed instead."""

    reason = "refused"

    def __init__(self, sentence: str, *, field: str = "", reason: str | None = None):
        self.sentence = sentence
        self.field = field
        self.jupyterhub_message = sentence
        if reason is not None:
            self.reason = reason
        super().__init__(sentence)


class RequestError(Refusal, ValueError):
    """A request that is malformed or not allowed to this user; ``field`` names the culprit."""

    reason = "validation"

    def __init__(self, field: str, sentence: str):
        super().__init__(sentence, field=field)


class CapacityRefusal(Refusal):
    """What was asked for is allowed but does not fit anywhere right now."""

    reason = "capacity"

    @classmethod
    def no_free_gpus(cls, display_name: str, count: int, detail: str = "", *, where: str = "node",
                     reason: str | None = None) -> CapacityRefusal:
        """The one sentence for "not enough free GPUs of this class", wherever it is found."""
        plural = "s" if count > 1 else ""
        holder = "No node has" if where == "node" else "This machine does not have"
        detail = f" ({detail})" if detail else ""
        return cls(
            f"{holder} {count} free {display_name} GPU{plural} right now{detail}; ask for fewer, "
            "or try again when others stop their servers.",
            field="gpu.count", reason=reason,
        )

    @classmethod
    def too_few_gpus(cls, display_name: str, count: int, total: int, *, where: str = "machine",
                     reason: str | None = None) -> CapacityRefusal:
        """Fewer GPUs of the class exist than were asked for: waiting would not help."""
        holder = "The cluster" if where == "node" else "This machine"
        if total == 0:
            return cls(f"{holder} has no {display_name} GPU; choose another GPU class, or none for a "
                       "CPU-only server.", field="gpu.type", reason=reason)
        plural = "s" if total > 1 else ""
        return cls(f"{holder} has only {total} {display_name} GPU{plural}; ask for at most {total}.",
                   field="gpu.count", reason=reason)

    @classmethod
    def short_of_gpus(cls, display_name: str, count: int, total: int, detail: str = "", *,
                      where: str = "machine", reason: str | None = None) -> CapacityRefusal:
        """``count`` GPUs of a class do not fit: too few exist (waiting would not help), or too
        few are free now (``detail`` says how many)."""
        if total < count:
            return cls.too_few_gpus(display_name, count, total, where=where, reason=reason)
        return cls.no_free_gpus(display_name, count, detail, where=where, reason=reason)


class QuotaExceeded(Refusal):
    """The server would take a user or a group over a quota summed across servers."""

    reason = "quota"


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(char: str) -> str:
    """One character as a log line may hold it: control, format and unassigned ones escaped
    (a newline could forge a log line, U+202E reverse the text a reader sees)."""
    if unicodedata.category(char)[0] not in "CZ" or char == " ":
        return char
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` on one line, every control or invisible character escaped."""
    return "".join(_shown(c) for c in text)


def clip(text: str, limit: int = 40) -> str:
    """User text quoted in a sentence: escaped and cut short, never a whole payload."""
    pieces = [_shown(c) for c in text[: limit + 1]]  # never more is looked at
    if len(text) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept, length = [], 0
    for piece in pieces:  # whole characters only: never half an escape
        if length + len(piece) > limit - 1:
            break
        kept.append(piece)
        length += len(piece)
    return "".join(kept) + "…"


def input_path(loc: Sequence[Any], data: Any) -> list[str | int]:
    """The part of a pydantic error location that names places in the input ``data``.

    Pydantic adds its own entries to locations (union branches, validator and discriminator
    tags) whose spelling changes between releases. Walking the input instead keeps exactly
    the keys and indices the user wrote, plus the last entry when that key is missing.
    """
    path: list[str | int] = []
    node = data
    for index, item in enumerate(loc):
        if isinstance(node, Mapping) and item in node:
            path.append(item)
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            path.append(item)
            node = node[item]
        elif index == len(loc) - 1 and isinstance(item, str) and isinstance(node, Mapping):
            path.append(item)  # a required key that is missing
    return path
