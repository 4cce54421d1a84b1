"""CPU and memory limits for local servers, where the operating system allows them.

Two mechanisms, tried in order: a cgroup v2 child group the hub can manage itself, or a
transient systemd scope (``systemd-run --scope``). Where neither works, nothing is
enforced and ``reason`` says so in words the form and log can show.

``prepare``, ``kill`` and ``cleanup`` write to the cgroup file system (a write can wait on the
kernel's cgroup lock): the spawner calls them in a worker thread, off the hub's event loop.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Limiter:
    mode: str | None  # "cgroup2", "systemd-run" or None
    reason: str
    base: Path | None = None

    @property
    def enforced(self) -> bool:
        return self.mode is not None

    def unit_name(self, owner: str) -> str:
        return "dcloud-" + _SAFE.sub("_", owner)[:80]

    def wrap(self, cmd: list[str], owner: str, cpu: float, memory: int) -> list[str]:
        """The command, prefixed where limits come from a systemd scope."""
        if self.mode != "systemd-run":
            return cmd
        user = [] if os.geteuid() == 0 else ["--user"]
        return [
            "systemd-run", *user, "--scope", "--quiet", "--collect",
            f"--unit={self.unit_name(owner)}",
            f"--property=CPUQuota={round(cpu * 100)}%",
            f"--property=MemoryMax={memory}", "--property=MemorySwapMax=0", "--", *cmd,
        ]

    def prepare(self, owner: str, cpu: float, memory: int) -> Callable[[], None] | None:
        """For cgroup v2: create the group now, return a pre-exec step that joins it."""
        if self.mode != "cgroup2" or self.base is None:
            return None
        group = self.base / self.unit_name(owner)
        group.mkdir(exist_ok=True)
        period = 100_000
        (group / "cpu.max").write_text(f"{max(1000, round(cpu * period))} {period}\n")
        (group / "memory.max").write_text(f"{memory}\n")
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0\n")
        procs = str(group / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as f:
                f.write("0\n")

        return join

    def kill(self, owner: str) -> None:
        """With cgroup v2: kill every process of the owner's group, even one that left its
        process group (``setsid``). Elsewhere the process group is all there is to kill."""
        if self.mode == "cgroup2" and self.base is not None:
            kill = self.base / self.unit_name(owner) / "cgroup.kill"  # Linux 5.14+
            if kill.exists():
                try:
                    kill.write_text("1\n")
                except OSError:
                    pass

    def cleanup(self, owner: str) -> None:
        if self.mode == "cgroup2" and self.base is not None:
            try:
                (self.base / self.unit_name(owner)).rmdir()
            except OSError:
                pass  # still has processes (e.g. stray children); the next start reuses it


def detect(root: Path = CGROUP_ROOT) -> Limiter:
    """The best mechanism this machine offers to the hub's user."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and {"cpu", "memory"} <= set(controllers.read_text().split()):
        base = root / "dcloud"
        try:
            (root / "cgroup.subtree_control").write_text("+cpu +memory\n")
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+cpu +memory\n")
            return Limiter("cgroup2", f"CPU and memory limits are enforced with cgroup v2 ({base}).", base)
        except OSError as exc:
            cgroup_problem = f"cgroup v2 is present but not writable by the hub ({exc.strerror})"
    else:
        cgroup_problem = "this machine has no cgroup v2 with cpu and memory controllers"
    if shutil.which("systemd-run") and Path("/run/systemd/system").is_dir():
        return Limiter("systemd-run", "CPU and memory limits are enforced with systemd scopes.")
    return Limiter(
        None,
        f"CPU and memory limits are not enforced on this machine: {cgroup_problem}, "
        "and systemd is not running.",
    )
