"""The ``datasets/`` folder of a local server: one entry per chosen dataset.

Where the hub may mount (root, with mount rights), each dataset is a read-only bind mount,
so even the server's own user cannot write to it. Elsewhere it is a symbolic link, and
writes are governed by the source directory's own permissions; the caller is told which.
Clearing the folder never descends into a mount: mounts are detached first, and only
empty directories are removed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path


async def _run(*argv: str) -> bool:
    """Run a mount tool without blocking the hub's event loop; True when it succeeded."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait() == 0


def _mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder`` (deepest first), from /proc/self/mountinfo."""
    root = os.path.realpath(folder)
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + os.sep):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


async def clear(folder: Path) -> None:
    """Remove a datasets folder made by :func:`build`, detaching its mounts first."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
        return
    if not folder.is_dir():
        return
    for point in _mounts_under(folder):
        await _run("umount", str(point))
    if _mounts_under(folder):
        raise OSError(f"cannot detach the dataset mounts under {folder}")
    folder.chmod(0o755)  # build() left it read-only
    for entry in folder.iterdir():
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            entry.rmdir()  # an (empty) former mount point: never a recursive delete
    folder.rmdir()  # gone, not just emptied: the next build() makes it afresh


async def _bind_read_only(source: Path, target: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir()
    steps = (("mount", "--bind", str(source), str(target)),
             ("mount", "-o", "remount,ro,bind", str(target)))
    for step in steps:
        if not await _run(*step):
            await _run("umount", str(target))
            target.rmdir()
            return False
    return True


async def build(folder: Path, sources: Iterable[tuple[str, Path]]) -> dict[str, str]:
    """Make ``folder/<id>`` for each (id, source directory); return id -> "read-only" or "linked"."""
    await clear(folder)
    sources = list(sources)
    if not sources:
        return {}
    folder.mkdir()
    how = {}
    for dataset_id, source in sources:
        target = folder / dataset_id
        if await _bind_read_only(source, target):
            how[dataset_id] = "read-only"
        else:
            target.symlink_to(source, target_is_directory=True)
            how[dataset_id] = "linked"
    # the folder itself cannot gain or lose entries from the server
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    return how
