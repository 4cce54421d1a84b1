"""Refusals: why DCloud will not start a server, as one sentence a user can act on.

Every refusal (invalid request, no capacity, over quota) is a :class:`Refusal`. Like
JupyterHub's ``SpawnException`` it carries ``jupyterhub_message`` (what the form, the REST
400 body and the progress page show) and a ``reason`` (the label of refusal metrics).
"""

from __future__ import annotations

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


class QuotaExceeded(Refusal):
    """The server would take a user or a group over a quota summed across servers."""

    reason = "quota"


def clip(text: str, limit: int = 40) -> str:
    """User text quoted in a sentence, cut short: refusals never echo a whole payload."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
