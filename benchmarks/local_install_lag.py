"""The hub's event loop while a local server's extra packages install: 1 GiB into a package environment.

    .venv/bin/python -m benchmarks.local_install_lag [--gib 1] [--rounds 3] [--nice -10] [--json out.json]

Runs the local backend's own install path (``DCloudLocalSpawner._install_packages``: the shared
installer of ``core/package_envs.py``, as the server's user) with a stand-in "python" whose
``pip install`` writes ``--gib`` GiB into the build folder (``PIP_TARGET``) as many files in many
folders (16 KiB each by default: 65,536 files in 1,024 folders, about what a large wheel set
unpacks to), while the loop-lag meter of ``benchmarks.hub_probe`` (a task that asks to wake every
millisecond) measures how long the hub's event loop was held. While pip runs, the hub measures
the build every half second (``paths.entries_size``: a walk of every file, up to
``package_overlay_max_bytes``) and removes it when refused. Every install starts from an empty
user directory, so each one builds (none reuses). Variants, interleaved, each round:

- ``no walk``: ``package_overlay_max_bytes = 0`` (no size limit, so no walk): what the install
  itself costs the loop, the floor for the others.
- ``on the loop``: the walks, removals and limiter calls run inline on the event loop, as before
  they moved to worker threads (``asyncio.to_thread`` replaced by a direct call, which is exactly
  the former code path).
- ``in a thread``: the code as it is.

and the same two for an install refused for size half-way (limit ``--gib``/2: walks, then the
removal of the half-written build). Reports each variant's longest stall (wall clock, and in
brackets the loop thread's own CPU over that tick), its p99, the longest walk, and the ratio of
the on-the-loop figure to the in-a-thread one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from traitlets.config import Config

from benchmarks.form_render import machine
from benchmarks.hub_probe import LoopLag
from dcloud_spawner.core import package_envs
from dcloud_spawner.demo import DEMO_CATALOG
from dcloud_spawner.hub.mixin import SpawnRefused
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.local import DCloudLocalSpawner, paths

FAKE_PIP = """#!{python}
import os, sys
if os.getpriority(os.PRIO_PROCESS, 0) < 0:
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # pip is not the hub: no share of its priority (--nice)
argv = sys.argv[1:]
if argv[:2] != ["-m", "pip"]:  # the installer and the version probe: the real interpreter
    os.execv({python!r}, [{python!r}, *argv])
target = os.environ["PIP_TARGET"]
size, count, per_folder = {file_bytes}, {files}, 64
block = os.urandom(size)
for i in range(count):
    folder = os.path.join(target, f"package_{{i // per_folder:04d}}")
    if i % per_folder == 0:
        os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"module_{{i % per_folder:02d}}.py"), "wb") as f:
        f.write(block)
"""


def log(message: str) -> None:
    print(f"[local_install_lag {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    variant: str
    case: str  # "installed" or "refused"
    seconds: float
    max_stall_ms: float
    max_cpu_stall_ms: float
    p99_stall_ms: float
    ticks: int
    walks: int
    longest_walk_ms: float
    removals: int
    longest_removal_ms: float
    env_bytes: int


@dataclass
class Timed:
    """Wraps the build's walk and removal, timing each call (wherever it runs)."""

    walks: list[float] = field(default_factory=list)
    removals: list[float] = field(default_factory=list)

    @contextmanager
    def installed(self) -> Iterator[None]:
        size, remove = paths.entries_size, paths.remove_entries
        paths.entries_size = self._timed(size, self.walks)  # type: ignore[assignment]
        paths.remove_entries = self._timed(remove, self.removals)  # type: ignore[assignment]
        try:
            yield
        finally:
            paths.entries_size, paths.remove_entries = size, remove  # type: ignore[assignment]

    @staticmethod
    def _timed(function: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - began)

        return call


@contextmanager
def on_the_loop() -> Iterator[None]:
    """The former code path: what now goes to a worker thread runs inline on the loop."""

    async def inline(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    threaded = asyncio.to_thread
    asyncio.to_thread = inline  # type: ignore[assignment]
    try:
        yield
    finally:
        asyncio.to_thread = threaded


def make_spawner(root: Path) -> DCloudLocalSpawner:
    reset_hub_state()
    config = Config()
    config.DCloudLocalSpawner.catalog_path = str(DEMO_CATALOG)
    config.DCloudLocalSpawner.server_root = str(root / "servers")
    spawner = DCloudLocalSpawner(user=OfflineUser("guest", []), hub=offline_hub(), config=config)
    spawner.workdir.mkdir(parents=True, exist_ok=True)
    return spawner


async def one_install(root: Path, python: str, variant: str, case: str, limit: int, total: int, lag: LoopLag) -> Run:
    spawner = make_spawner(root)
    spawner.package_overlay_max_bytes = limit
    plan = spawner.validate_options({"environment": "pytorch", "packages": ["big-package"]})
    timed = Timed()
    refused = False
    with timed.installed(), on_the_loop() if variant == "on the loop" else _nothing():
        lag.begin()
        try:
            await spawner._install_packages(plan, python)
        except SpawnRefused:
            refused = True
        phase = lag.end(f"{variant}, {case}")
    size = paths.entries_size(spawner.user_dir, Path(package_envs.ENVS_DIR).parts, "")  # published or not
    if (case == "refused") != refused or (not refused and size < total):
        raise RuntimeError(f"{variant}, {case}: refused {refused}, package environments {size} bytes")
    shutil.rmtree(spawner.user_dir / ".dcloud", ignore_errors=True)  # the next install builds afresh
    return Run(
        variant,
        case,
        phase.seconds,
        phase.max_stall_ms,
        phase.max_cpu_stall_ms,
        phase.p99_stall_ms,
        phase.ticks,
        len(timed.walks),
        round(max(timed.walks, default=0.0) * 1000, 1),
        len(timed.removals),
        round(max(timed.removals, default=0.0) * 1000, 1),
        size,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


async def measure(args: argparse.Namespace, root: Path) -> list[Run]:
    total = int(args.gib * 1024**3)
    file_bytes = args.file_kib * 1024
    files = total // file_bytes
    script = root / "python"
    script.write_text(FAKE_PIP.format(python=os.path.realpath(sys.executable), file_bytes=file_bytes, files=files))
    script.chmod(0o755)
    log(f"each install writes {files:,} files of {args.file_kib} KiB ({total / 1024**3:g} GiB)")
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(0.05)
    runs: list[Run] = []
    variants = ["no walk", "on the loop", "in a thread"]
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else list(reversed(variants))
        for variant in order:
            limit = 0 if variant == "no walk" else 2 * 1024**3
            runs.append(await one_install(root, str(script), variant, "installed", limit, total, lag))
        for variant in order[1:] if round_ % 2 == 0 else order[:-1]:
            runs.append(await one_install(root, str(script), variant, "refused", total // 2, total, lag))
    lag.stop()
    return runs


def summary(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per (case, variant): the longest stall over the rounds and the median of each round's."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted({(r.case, r.variant) for r in runs}):
        mine = [r for r in runs if (r.case, r.variant) == key]
        out[f"{key[0]}: {key[1]}"] = {
            "max_stall_ms": max(r.max_stall_ms for r in mine),
            "median_max_stall_ms": statistics.median(r.max_stall_ms for r in mine),
            "max_cpu_stall_ms": max(r.max_cpu_stall_ms for r in mine),
            "p99_stall_ms": max(r.p99_stall_ms for r in mine),
            "longest_walk_ms": max(r.longest_walk_ms for r in mine),
            "longest_removal_ms": max(r.longest_removal_ms for r in mine),
            "walks": statistics.median(r.walks for r in mine),
            "seconds": statistics.median(r.seconds for r in mine),
            "rounds": len(mine),
        }
    return out


def report(runs: list[Run]) -> str:
    table = summary(runs)
    lines = [
        "| case | variant | longest stall, ms (loop's own CPU) | median of rounds' longest, ms | p99, ms "
        "| walks / install | longest walk, ms | longest removal, ms | install, s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, row in table.items():
        case, variant = key.split(": ")
        lines.append(
            f"| {case} | {variant} | {row['max_stall_ms']:.1f} ({row['max_cpu_stall_ms']:.1f}) "
            f"| {row['median_max_stall_ms']:.1f} | {row['p99_stall_ms']:.1f} | {row['walks']:g} "
            f"| {row['longest_walk_ms']:.1f} | {row['longest_removal_ms']:.1f} | {row['seconds']:.1f} |"
        )
    for case in ("installed", "refused"):
        before, after = table.get(f"{case}: on the loop"), table.get(f"{case}: in a thread")
        if before and after:
            lines.append(
                f"\n{case}: longest stall in a thread / on the loop: {after['max_stall_ms']:.1f} / "
                f"{before['max_stall_ms']:.1f} ms = {after['max_stall_ms'] / before['max_stall_ms']:.3f}x "
                f"(medians {after['median_max_stall_ms']:.1f} / {before['median_max_stall_ms']:.1f} ms = "
                f"{after['median_max_stall_ms'] / before['median_max_stall_ms']:.3f}x)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.local_install_lag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gib", type=float, default=1.0, help="GiB each install writes (default 1)")
    parser.add_argument("--file-kib", type=int, default=16, help="size of each file written, KiB (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant, interleaved (default 3)")
    parser.add_argument("--dir", type=Path, help="where the environments are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of this process (the hub), and its session's autogroup nice: below 0 "
        "(root only) it wins the CPU from other work on the machine, as a hub with a CPU of its own "
        "would; the stand-in pip, in a session of its own, runs at 0 (default 0)",
    )
    args = parser.parse_args(argv)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():
            autogroup.write_text(str(args.nice))
    root = Path(tempfile.mkdtemp(prefix="dcloud-install-lag-", dir=args.dir))
    try:
        runs = asyncio.run(measure(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"json": str(args.json), "dir": str(args.dir)},
                    "runs": [asdict(r) for r in runs],
                    "summary": summary(runs),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
