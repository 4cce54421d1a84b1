"""A validated request: exactly what one server gets, ready for any backend."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .catalog import Dataset, Environment, GpuClass, Storage
from .errors import clip
from .quantity import format_memory

_NOT_FOUND = re.compile(r"No matching distribution found for (\S+)")
_UNREACHABLE = ("Could not fetch URL", "Connection refused", "Failed to establish a new connection",
                "Name or service not known", "Temporary failure in name resolution")


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs; produced only by :func:`validation.validate`.

    Backends must not re-interpret user input: whatever is not in a Plan was not granted.
    """

    environment: Environment
    image: str
    gpu: GpuClass | None
    gpu_count: int
    cpu_limit: float
    cpu_request: float
    memory_limit: int
    memory_request: int
    shm_bytes: int
    datasets: tuple[Dataset, ...]
    packages: tuple[str, ...]
    package_index_url: str | None
    wait: bool = False  # may wait in line (Kueue) when the GPUs are not free now
    home_bytes: int | None = None  # the home volume's size; None: the catalog offers no choice
    # the request named no home size, so home_bytes is the catalog's default: a backend that knows
    # the volume's size now takes the larger (an unnamed size never asks a volume to shrink)
    home_defaulted: bool = field(default=False, compare=False)
    scratch_bytes: int | None = None  # /scratch; None: no scratch disk
    storage: Storage | None = None  # the catalog's storage settings (classes, ephemeral limits)

    @property
    def gpu_id(self) -> str | None:
        return self.gpu.id if self.gpu else None

    @property
    def package_environments(self) -> int:
        """How many package environments a user's home keeps: the catalog's setting, or its
        model's default where the catalog has no ``storage`` section."""
        return (self.storage if self.storage is not None else Storage()).package_environments

    def user_options(self) -> dict[str, Any]:
        """The request in normal form (JSON-safe); what JupyterHub stores and pre-fills."""
        options: dict[str, Any] = {
            "environment": self.environment.id,
            "cpu": self.cpu_limit,
            "memory": format_memory(self.memory_limit),
            "datasets": [d.id for d in self.datasets],
            "packages": list(self.packages),
        }
        if self.gpu:
            options["gpu"] = {"type": self.gpu.id, "count": self.gpu_count}
        if self.wait:
            options["wait"] = True
        if self.home_bytes is not None:
            options["home"] = format_memory(self.home_bytes)
        if self.scratch_bytes is not None:
            options["scratch"] = format_memory(self.scratch_bytes)
        return options

    def environment_variables(self) -> dict[str, str]:
        """``DCLOUD_*`` variables every backend gives the server, so notebooks can see their grant."""
        return {
            "DCLOUD_ENVIRONMENT": self.environment.id,
            "DCLOUD_GPU_CLASS": self.gpu.id if self.gpu else "",
            "DCLOUD_GPU_COUNT": str(self.gpu_count),
            "DCLOUD_CPU_LIMIT": f"{self.cpu_limit:g}",
            "DCLOUD_MEMORY_LIMIT": format_memory(self.memory_limit),
            "DCLOUD_DATASETS": ",".join(d.id for d in self.datasets),
            **({"DCLOUD_HOME_SIZE": format_memory(self.home_bytes)} if self.home_bytes is not None else {}),
            **({"DCLOUD_SCRATCH_SIZE": format_memory(self.scratch_bytes)} if self.scratch_bytes is not None else {}),
        }

    def pip_install_command(self, python: str = "python", target: str | None = None,
                            admin_args: Sequence[str] = (), cache: bool = False) -> list[str]:
        """The argv that installs this plan's packages, for every backend and the Dockerfile.

        A security rule lives here: the user's packages come after ``--``, so they can only
        ever be requirement specifiers, never pip options; the index comes from the catalog
        alone, and other pip options only from the admin (``admin_args``).
        """
        argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        if not cache:
            argv.append("--no-cache-dir")
        if target is not None:
            argv += ["--target", target]
        argv += list(admin_args)
        if self.package_index_url:
            argv += ["--index-url", self.package_index_url]
            index = urlsplit(self.package_index_url)
            if index.scheme == "http" and index.netloc:
                # pip ignores a plain-HTTP index unless its host is trusted; the admin chose it
                argv += ["--trusted-host", index.netloc]
        return [*argv, "--", *self.packages]

    def install_failure(self, output: str) -> str:
        """One sentence on why installing the packages failed, from pip's output (its tail).

        Names the package pip could not find where it says so; never echoes more than a
        clipped line of pip's output.
        """
        missing = _NOT_FOUND.search(output)
        if missing:
            try:
                wanted = canonicalize_name(Requirement(missing.group(1)).name)
            except InvalidRequirement:
                wanted = canonicalize_name(missing.group(1))
            named = [p for p in self.packages if canonicalize_name(Requirement(p).name) == wanted]
            shown = named[0] if named else clip(missing.group(1))
            where = "the package index" + (f" {self.package_index_url}" if self.package_index_url else "")
            return (f"Extra package '{shown}' could not be installed: {where} has no version of it for "
                    "this environment. Check its name and version, or leave it out.")
        if any(marker in output for marker in _UNREACHABLE):
            return "Installing the extra packages failed: the package index could not be reached."
        errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR")]
        lines = errors or [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
        return f"Installing the extra packages failed: {clip(lines[-1], 300)}"

    def summary(self) -> str:
        """One line for logs and progress messages."""
        gpu = f"{self.gpu_count} × {self.gpu.display_name}" if self.gpu else "no GPU"
        parts = [
            self.environment.display_name,
            gpu,
            f"{self.cpu_limit:g} CPU",
            format_memory(self.memory_limit),
        ]
        if self.home_bytes is not None:
            parts.append(f"{format_memory(self.home_bytes)} home")
        if self.scratch_bytes is not None:
            parts.append(f"{format_memory(self.scratch_bytes)} scratch")
        if self.datasets:
            parts.append("datasets " + ", ".join(d.id for d in self.datasets))
        if self.packages:
            parts.append(f"{len(self.packages)} extra package(s)")
        return ", ".join(parts)
