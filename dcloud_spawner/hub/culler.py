"""Idle culling that gives GPUs back sooner: an arbiter for ``jupyterhub-idle-culler``.

The culler (a JupyterHub service, version 2.0 or newer) asks its ``cull_arbiter_hook``
about every running server, with keyword arguments ``inactive`` (a timedelta, or None
before any activity), ``inactive_limit`` (its ``--timeout``, in seconds) and ``server``
(the hub's REST model of the server). DCloud stores the validated request as the
server's ``user_options``, and a server holds a GPU exactly when those options carry a
``gpu`` entry. :func:`gpu_aware_arbiter` culls such servers after their own, shorter
timeout and leaves every other server to the culler's ``--timeout``.

The culler's token needs :data:`CULLER_SCOPES` and nothing more: ``read:servers``
already includes ``user_options`` in the server model (JupyterHub >= 6.1), so no
``admin:server_state`` is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

#: The scopes the culler's token needs to stop idle servers, and no more:
#: list users, read their activity, read their servers (with ``user_options``), stop them.
CULLER_SCOPES: tuple[str, ...] = ("list:users", "read:users:activity", "read:servers", "delete:servers")


def holds_gpu(server: Mapping[str, Any]) -> bool:
    """Whether the server was started with a GPU, judged by its ``user_options``.

    A server model without ``user_options`` (a server not started through DCloud's
    validation, or options never stored) counts as a CPU server.
    """
    options = server.get("user_options") or {}
    gpu = options.get("gpu") if isinstance(options, Mapping) else None
    if not isinstance(gpu, Mapping) or not gpu.get("type"):
        return False
    return gpu.get("count", 1) != 0


@dataclass(frozen=True)
class GpuAwareArbiter:
    """The culler's ``cull_arbiter_hook``: GPU servers after ``gpu_timeout`` idle seconds,
    other servers after the culler's own limit. Build it with :func:`gpu_aware_arbiter`."""

    gpu_timeout: int

    def __call__(self, *, inactive: timedelta | None, inactive_limit: int, server: Mapping[str, Any],
                 **_: Any) -> bool:
        if inactive is None:  # no activity and no start time: the culler skips it anyway
            return False
        limit = min(self.gpu_timeout, inactive_limit) if holds_gpu(server) else inactive_limit
        return inactive.total_seconds() >= limit


def gpu_aware_arbiter(gpu_timeout: int, cpu_timeout: int | None = None) -> GpuAwareArbiter:
    """A ``cull_arbiter_hook`` that stops GPU servers after ``gpu_timeout`` seconds idle.

    CPU servers keep the culler's own limit (``inactive_limit``, its ``--timeout``).
    ``gpu_timeout`` must be positive and, when ``cpu_timeout`` (the value given to
    ``--timeout``) is passed, shorter than it; otherwise ``ValueError``. Should the
    culler run with a ``--timeout`` shorter than ``gpu_timeout`` anyway, GPU servers
    use that shorter limit: a GPU server is never kept longer than a CPU server.
    """
    if isinstance(gpu_timeout, bool) or not isinstance(gpu_timeout, int) or gpu_timeout <= 0:
        raise ValueError(f"gpu_timeout must be a positive number of seconds, not {gpu_timeout!r}")
    if cpu_timeout is not None and gpu_timeout >= cpu_timeout:
        raise ValueError(
            f"gpu_timeout ({gpu_timeout} s) must be shorter than the CPU timeout ({cpu_timeout} s)"
        )
    return GpuAwareArbiter(gpu_timeout)


def seconds_from_env(name: str, default: int, environ: Mapping[str, str] = os.environ) -> int:
    """A positive whole number of seconds from the environment variable ``name``."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value}")
    return value


def require_arbiter_hook() -> None:
    """Fail unless the installed culler has ``cull_arbiter_hook`` (jupyterhub-idle-culler >= 2.0).

    An older culler would only warn about the unknown setting and then cull GPU
    servers after the CPU timeout; refusing to start says so instead.
    """
    from jupyterhub_idle_culler import IdleCuller, __version__

    if "cull_arbiter_hook" not in IdleCuller.class_trait_names(config=True):
        raise RuntimeError(
            f"jupyterhub-idle-culler {__version__} has no cull_arbiter_hook, which DCloud's GPU timeout needs; "
            "install jupyterhub-idle-culler 2.0 or newer"
        )
