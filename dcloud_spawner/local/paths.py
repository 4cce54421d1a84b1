"""Paths inside a server's working directory, handled by the hub without following links.

The server's user may replace anything in its working directory with a symbolic link at any
moment (in its home directory it owns the folder). So the hub, often root, never resolves a
path there by name: it opens each level with ``O_NOFOLLOW`` relative to the level above
and acts on the open directory, so a link is seen as a link, never as its target.

Walking or removing a tree (a package environment of up to 2 GiB is tens of thousands of
files) blocks for as long as it takes: the hub calls these in a worker thread, never on its
event loop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

DATASETS = "datasets"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(base: Path, *names: str) -> int:
    """An fd of ``base/names...``; raises OSError where any of ``names`` is a link or no folder.

    ``base`` itself is trusted (a folder the user cannot replace: the hub's server root, or
    the home directory, whose parent is root's).
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_at(dir_fd: int, name: str) -> None:
    """Remove the entry ``name`` of an open folder: a file or link itself, or a whole tree.

    Iterative and fd-based: a deep tree cannot exhaust the stack, and a folder swapped for a
    link mid-way makes the removal fail (``O_NOFOLLOW``), never leave the tree.
    """
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    stack = [(dir_fd, name, os.open(name, _DIR_FLAGS, dir_fd=dir_fd))]
    try:
        while stack:
            parent, current, fd = stack[-1]
            deeper = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        deeper = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if deeper is not None:
                stack.append((fd, deeper, os.open(deeper, _DIR_FLAGS, dir_fd=fd)))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(current, dir_fd=parent)
    finally:
        for _, _, fd in stack:
            os.close(fd)


def remove_entries(base: Path, folder: Sequence[str], prefix: str) -> bool:
    """Remove every entry of ``base/folder...`` whose name starts with ``prefix``, without
    following links below ``base``; False when one could not be removed."""
    try:
        fd = open_dir(base, *folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    done = True
    try:
        for name in _names(fd, prefix):
            try:
                remove_at(fd, name)
            except OSError:
                done = False
    finally:
        os.close(fd)
    return done


def entries_size(base: Path, folder: Sequence[str], prefix: str, stop_at: int = 0) -> int:
    """Bytes held by the entries of ``base/folder...`` whose names start with ``prefix``
    (apparent sizes, each inode once, links not followed).

    Stops counting once past ``stop_at`` (when set): a caller that only compares with a limit
    need not walk a huge tree to the end.
    """
    try:
        parent = open_dir(base, *folder)
    except OSError:
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        for name in _names(parent, prefix):
            total += _tree_size(parent, name, seen, stop_at - total if stop_at else 0)
            if stop_at and total > stop_at:
                break
    finally:
        os.close(parent)
    return total


def is_file_at(base: Path, *names: str) -> bool:
    """Whether ``base/names...`` is a plain file, no level of it a link."""
    try:
        fd = open_dir(base, *names[:-1])
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.stat(names[-1], dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


def _names(dir_fd: int, prefix: str) -> list[str]:
    with os.scandir(dir_fd) as entries:
        return [entry.name for entry in entries if entry.name.startswith(prefix)]


def _tree_size(parent: int, name: str, seen: set[tuple[int, int]], stop_at: int) -> int:
    """Bytes held by the entry ``name`` of an open folder, its tree walked by fd."""
    stack: list[int] = []
    total = 0
    try:
        info = os.lstat(name, dir_fd=parent)
        if (info.st_dev, info.st_ino) in seen:
            return 0
        seen.add((info.st_dev, info.st_ino))
        total = info.st_size
        if stat.S_ISDIR(info.st_mode):
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=parent))
        while stack and not (stop_at and total > stop_at):
            fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        info = entry.stat(follow_symlinks=False)
                        if (info.st_dev, info.st_ino) in seen:
                            continue
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_size
                        if stat.S_ISDIR(info.st_mode):
                            stack.append(os.open(entry.name, _DIR_FLAGS, dir_fd=fd))
            finally:
                os.close(fd)
    except OSError:
        pass  # removed, or swapped for a link since listed (pip moves files about): not counted
    finally:
        for fd in stack:
            os.close(fd)
    return total


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"
