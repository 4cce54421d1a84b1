"""The ``datasets/`` folder of a local server: one entry per chosen dataset.

Where the hub may mount (root, with mount rights), each dataset is a read-only bind mount,
so even the server's own user cannot write to it. Elsewhere it is a symbolic link, and
writes are governed by the source directory's own permissions; the caller is told which.

The folder lies in a directory the server's user controls (its home, with
``run_as_system_users``), so the user may swap it for a link at any moment. The hub, often
root, therefore never acts on it by name: it opens it with ``O_NOFOLLOW`` relative to its
parent and mounts, unmounts, lists and removes through that open folder (mount targets as
``/proc/self/fd/N``, which the kernel resolves to the very folder opened). A link found in
its place is removed itself, never followed. Clearing never descends into a mount: mounts
are detached first, and only empty directories are removed.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from pathlib import Path

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MNT_DETACH = 1, 32, 4096, 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HANDLE = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


def _fd_path(fd: int) -> bytes:
    return f"/proc/self/fd/{fd}".encode()


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


def _detach(dir_fd: int, name: str) -> None:
    """Unmount every layer mounted on the entry ``name`` of an open folder (none: nothing)."""
    while True:
        try:
            handle = os.open(name, _HANDLE, dir_fd=dir_fd)
        except OSError:
            return  # not a directory (a link, a file) or gone: nothing mounted to find
        try:
            if _libc.umount2(_fd_path(handle), _MNT_DETACH) != 0:
                return  # EINVAL: not a mount point (any more); EPERM: the hub may not mount
        finally:
            os.close(handle)


def _open_parent(folder: Path) -> int:
    # the parent is trusted: the server root, or a home directory whose parent is root's
    return os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


async def clear(folder: Path) -> None:
    """Remove a datasets folder made by :func:`build`, detaching its mounts first.

    Raises OSError when the folder holds something :func:`build` did not put there (a
    non-empty directory of the user's): nothing of the user's is deleted.
    """
    parent = _open_parent(folder)
    try:
        name = folder.name
        try:
            mode = os.lstat(name, dir_fd=parent).st_mode
        except FileNotFoundError:
            return
        try:
            fd = os.open(name, _DIR, dir_fd=parent) if stat.S_ISDIR(mode) else None
        except OSError:
            fd = None  # swapped for a link since lstat: it goes below, unfollowed
        if fd is None:
            os.unlink(name, dir_fd=parent)  # a link or file in its place: the entry itself goes
            return
        try:
            os.fchmod(fd, 0o700)  # build() left it read-only
            for entry in os.listdir(fd):
                _detach(fd, entry)
                if stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode):
                    os.rmdir(entry, dir_fd=fd)  # an (empty) former mount point: never recursive
                else:
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent)  # gone, not just emptied: the next build() makes it afresh
        except NotADirectoryError:
            os.unlink(name, dir_fd=parent)  # the user renamed it away and left a link: that goes
    finally:
        os.close(parent)


def _bind_read_only(source: Path, folder_fd: int, name: str) -> bool:
    if os.geteuid() != 0:
        return False
    os.mkdir(name, 0o755, dir_fd=folder_fd)
    target = os.open(name, _HANDLE, dir_fd=folder_fd)
    try:
        bound = _libc.mount(os.fsencode(source), _fd_path(target), None, _MS_BIND, None) == 0
    finally:
        os.close(target)
    if bound:
        mounted = os.open(name, _HANDLE, dir_fd=folder_fd)  # now the mount's own root
        try:
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
            if _libc.mount(None, _fd_path(mounted), None, flags, None) == 0:
                return True
        finally:
            os.close(mounted)
    _detach(folder_fd, name)
    os.rmdir(name, dir_fd=folder_fd)
    return False


async def build(folder: Path, sources: Iterable[tuple[str, Path]]) -> dict[str, str]:
    """Make ``folder/<id>`` for each (id, source directory); return id -> "read-only" or "linked"."""
    await clear(folder)
    sources = list(sources)
    if not sources:
        return {}
    parent = _open_parent(folder)
    try:
        os.mkdir(folder.name, 0o700, dir_fd=parent)  # the hub's own: the user cannot add entries
        fd = os.open(folder.name, _DIR, dir_fd=parent)  # fails if swapped for a link meanwhile
    finally:
        os.close(parent)
    how = {}
    try:
        for dataset_id, source in sources:
            if _bind_read_only(source, fd, dataset_id):
                how[dataset_id] = "read-only"
            else:
                os.symlink(source, dataset_id, target_is_directory=True, dir_fd=fd)
                how[dataset_id] = "linked"
        # the folder itself cannot gain or lose entries from the server
        os.fchmod(fd, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    finally:
        os.close(fd)
    return how
