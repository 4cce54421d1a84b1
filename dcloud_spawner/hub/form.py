"""The spawn form: rendering it for one user, and reading it back into a request."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..core.availability import GpuAvailability
from ..core.catalog import Allowance, Catalog
from ..core.quantity import format_memory, format_size, memory_bytes
from ..core.request import MAX_FILE_BYTES, load_options_file

# Templates are read on first render, not at import.
templates = Environment(
    loader=PackageLoader("dcloud_spawner.hub", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


@dataclass
class FormContext:
    """What the form shows besides the catalog: live data and backend notices."""

    availability: Mapping[str, GpuAvailability] | None = None
    notices: list[str] = field(default_factory=list)
    limits_enforced: bool = True
    gpu_help: str = ""
    stale_since: float | None = None  # availability is a copy from before the cluster stopped answering
    waiting: Mapping[str, int] | None = None  # GPU class id -> requests waiting in line (Kueue)
    can_queue: bool = False  # the backend queues (Kubernetes with Kueue), so the form offers to wait
    home_size: int | None = None  # the user's home volume as it is now (it only grows)
    home_used: int | None = None  # bytes used on it, where the backend can read it
    home_used_at: float | None = None  # when it was read, if not now (the server's last stop)


def _num(value: float) -> str:
    return f"{value:g}"


def form_values(catalog: Catalog, allowance: Allowance, options: Mapping[str, Any] | None) -> dict:
    """The form's field values from user_options (or a rejected attempt), as strings."""
    options = dict(options or {})
    gpu = options.get("gpu") if isinstance(options.get("gpu"), Mapping) else {}
    datasets = options.get("datasets") or []
    packages = options.get("packages") or []
    env = options.get("environment") or (allowance.environments[0] if allowance.environments else "")
    return {
        "environment": str(env),
        "gpu_type": str(gpu.get("type") or ""),
        "gpu_count": str(gpu.get("count") or 1),
        "cpu": str(options["cpu"] if options.get("cpu") is not None else _num(allowance.default_cpu)),
        "memory": str(options.get("memory") or format_memory(allowance.default_memory)),
        "home": str(options.get("home") or (format_memory(allowance.default_home) if allowance.default_home else "")),
        "scratch": str(options.get("scratch")
                       or (format_memory(allowance.default_scratch) if allowance.default_scratch else "")),
        "datasets": [str(d) for d in datasets] if isinstance(datasets, list) else [],
        "packages": "\n".join(str(p) for p in packages) if isinstance(packages, list) else "",
        "wait": options.get("wait") is True or options.get("wait") == "on",
    }


def render_form(
    catalog: Catalog,
    allowance: Allowance,
    options: Mapping[str, Any] | None = None,
    context: FormContext | None = None,
) -> str:
    """HTML for the spawn form, showing only what ``allowance`` permits.

    ``options`` pre-fills the fields: the last valid user_options, or the values of a
    submission that was just refused (so the user keeps their choices).
    """
    context = context or FormContext()
    values = form_values(catalog, allowance, options)
    if context.home_size is not None and _smaller(values["home"], context.home_size):
        # the home volume only grows: a size below it (the default, or one it has grown past
        # since) would be refused, so the form offers the volume as it is
        values["home"] = format_memory(context.home_size)
    queueing = catalog.queueing
    offer_wait = queueing.enabled and context.can_queue
    gpu_classes = []
    if allowance.max_gpus > 0:
        for gpu_id in allowance.gpu_classes:
            gpu = catalog.gpu_class(gpu_id)
            limit = min(gpu.max_count, allowance.max_gpus)
            entry: dict[str, Any] = {
                "id": gpu.id,
                "display_name": gpu.display_name,
                "max": limit,
                "availability": "",
                "note": f"{gpu.display_name}: {gpu.description}" if gpu.description else "",
                "full": False,
                "none_here": False,
            }
            live = (context.availability or {}).get(gpu.id)
            if live is not None and live.total == 0:
                entry["availability"] = "none here"
                entry["full"] = entry["none_here"] = True
                entry["note"] = f"{gpu.display_name}: there is none here, so it cannot be granted."
            elif live is not None:
                entry["availability"] = f"{live.free} of {live.total} free"
                if context.stale_since is not None:
                    entry["availability"] += time.strftime(" (as of %H:%M UTC)", time.gmtime(context.stale_since))
                waiting = (context.waiting or {}).get(gpu.id)
                if waiting:
                    entry["availability"] += f", {waiting} waiting"
                if live.largest_free_block < 1:
                    entry["full"] = True
                    entry["note"] = (
                        f"{gpu.display_name}: none free right now; tick 'Wait in line' to queue for one, "
                        "or a request is refused until one is released." if offer_wait else
                        f"{gpu.display_name}: none free right now; a request would be refused "
                        "until one is released."
                    )
                elif live.largest_free_block < limit:
                    entry["note"] = (
                        f"{gpu.display_name}: at most {live.largest_free_block} fit on one node "
                        "right now."
                    )
            gpu_classes.append(entry)
    gpu_help = context.gpu_help
    if not (allowance.gpu_classes and allowance.max_gpus > 0):
        gpu_help = "GPUs are not available to your groups; servers are CPU only."
    memory_range = catalog.resources.memory
    return templates.get_template("form.html").render(
        environments=[catalog.environment(e) for e in allowance.environments],
        gpu_classes=gpu_classes,
        gpu_count_max=max([g["max"] for g in gpu_classes], default=1),
        gpu_help=gpu_help,
        cpu={"min": _num(catalog.resources.cpu.min), "max": _num(allowance.max_cpu)},
        memory={"min": format_memory(memory_range.min), "max": format_memory(allowance.max_memory)},
        home=_storage_field(catalog.storage.home, allowance.max_home, context),
        scratch=_storage_field(catalog.storage.scratch, allowance.max_scratch, None),
        datasets=[catalog.dataset(d) for d in allowance.datasets],
        packages=catalog.packages,
        values=values,
        notices=context.notices,
        limits_enforced=context.limits_enforced,
        max_file_kib=MAX_FILE_BYTES // 1024,
        queueing={"enabled": offer_wait and bool(gpu_classes), "wait": queueing.wait_words(),
                  "preemption": queueing.preemption},
    )


def _smaller(size: str, than: int) -> bool:
    """Whether a size field's value is a size below ``than`` (an empty field is; text that is no
    size is left for the user to see)."""
    if not size:
        return True
    try:
        return memory_bytes(size) < than
    except ValueError:
        return False


def _storage_field(offered: Any, most: int | None, context: FormContext | None) -> dict[str, str] | None:
    """A storage size field's range and help; None when the catalog offers no choice."""
    if offered is None or most is None:
        return None
    low = offered.min
    note = ""
    if context is not None and context.home_size is not None:
        low = max(low, context.home_size)
        note = f"Your home volume is {format_memory(context.home_size)} now"
        if context.home_used is not None:
            note += f", {format_size(context.home_used)} used"
            if context.home_used_at is not None:
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(context.home_used_at))
                note += f" when your server stopped ({when})"
        note += "; it only grows."
    return {"min": format_memory(low), "max": format_memory(most), "note": note}


def _first(formdata: Mapping[str, list[Any]], key: str) -> str:
    values = formdata.get(key) or [""]
    return str(values[0]).strip()


def request_from_form(formdata: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A raw request (not yet validated) from the form's fields; a file is read apart and,
    when given, replaces these fields.

    Form data arrives as lists of strings (see ``uploaded_options`` for the file).
    """
    request: dict[str, Any] = {}
    if _first(formdata, "environment"):
        request["environment"] = _first(formdata, "environment")
    gpu_type = _first(formdata, "gpu_type")
    if gpu_type:
        request["gpu"] = {"type": gpu_type, "count": _first(formdata, "gpu_count") or "1"}
    if _first(formdata, "cpu"):
        request["cpu"] = _first(formdata, "cpu")
    if _first(formdata, "memory"):
        request["memory"] = _first(formdata, "memory")
    for size in ("home", "scratch"):
        if _first(formdata, size):
            request[size] = _first(formdata, size)
    request["datasets"] = [str(d) for d in formdata.get("datasets", []) if str(d).strip()]
    lines = "\n".join(str(p) for p in formdata.get("packages", []))
    request["packages"] = [line.strip() for line in lines.splitlines() if line.strip()]
    if _first(formdata, "wait"):
        request["wait"] = _first(formdata, "wait") in ("on", "true", "1")
    return request


def uploaded_options(formdata: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The fields of the uploaded configuration file (``config_file``), or {} if none.

    JupyterHub passes uploads as tornado ``HTTPFile``s (dicts with ``body`` and
    ``filename``). Only the parsed fields leave this function, never the raw bytes.
    """
    for upload in formdata.get("config_file", []):
        body = upload.get("body", b"") if isinstance(upload, Mapping) else b""
        name = upload.get("filename", "") if isinstance(upload, Mapping) else ""
        if body:
            return load_options_file(bytes(body), str(name))
    return {}
