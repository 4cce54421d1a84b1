"""A local server's dataset views: one entry per chosen dataset, in a folder of its workdir.

Where the hub may mount (root, with mount rights), each dataset is a read-only bind mount,
so even the server's own user cannot write to it. Elsewhere it is a symbolic link, and
writes are governed by the source directory's own permissions; the caller is told which.

**Only what DCloud made is ever removed.** The workdir is the user's (their real home with
``run_as_system_users``), so a folder named ``datasets`` may well hold their own files.
Before making anything, the hub writes down what it is about to make in a record of its
own, outside the user's reach: the folder (name, device and inode once made) and each
entry (a link and its target, or a mount point). Clearing removes exactly those: a link
only while it still points where DCloud pointed it, a mount point only once detached and
empty, the folder only when empty and still the very folder DCloud made. Anything else —
the user's files, folders, links, a folder they made in place of DCloud's — is left as it
is. Because the record is written before each step, a hub that died half-way (a mount left
behind by a crash) is cleaned up at the next start or stop. When ``datasets`` is taken by
the user's own data, the views go to ``.dcloud-datasets`` instead; when both are taken,
:class:`FolderTaken` says so and nothing is made.

The user may swap anything in the workdir for a link at any moment, so the hub, often root,
never acts on a path by name: it opens the folder with ``O_NOFOLLOW`` relative to its
parent and mounts, unmounts, lists and removes through that open folder (mount targets as
``/proc/self/fd/N``, which the kernel resolves to the very folder opened).

All of this is blocking file-system work: callers on the hub's event loop run it in a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core import refusals
from .paths import DATASETS, open_dir

FOLDER_NAMES = (DATASETS, ".dcloud-datasets")  # the first one free (or DCloud's own) is used

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MNT_DETACH = 1, 32, 4096, 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HANDLE = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


class FolderTaken(OSError):
    """Every name DCloud may use for the views holds the user's own data."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        super().__init__(errno.EEXIST, refusals.dataset_folders_taken(names).sentence)


def _fd_path(fd: int) -> bytes:
    return f"/proc/self/fd/{fd}".encode()


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[tuple[str, str, str]]:
    """(device, root within its file system, mount point) of every mount this process sees."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [(f[2], _unescape(f[3]), _unescape(f[4])) for f in (line.split() for line in lines)]


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder`` (deepest first), from /proc/self/mountinfo."""
    root = os.path.realpath(folder)
    found = [Path(point) for _, _, point in _mountinfo() if point == root or point.startswith(root + os.sep)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _bind_origin(source: str, mounts: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """(device, root) that a bind mount of ``source`` shows in mountinfo."""
    real = os.path.realpath(source)
    best = None
    for device, root, point in mounts:
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (best is None or len(point) > len(best[2])):
            best = (device, root, point)
    if best is None:
        return None
    rest = os.path.relpath(real, best[2])
    return best[0], os.path.normpath(os.path.join(best[1], rest)) if rest != "." else best[1]


def _detach_path(base: Path, relative: str) -> None:
    """Detach the mount at ``base/relative``, walking down without following any link."""
    *folders, last = Path(relative).parts
    fd = open_dir(base, *folders)
    try:
        _detach(fd, last)
    finally:
        os.close(fd)


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


class Record:
    """What DCloud made in one server's workdir, kept in a file of the hub's own.

    ``folder``: the views folder's name; ``identity``: its (device, inode) once made;
    ``entries``: dataset id -> {"kind": "mount" | "link", "source": path}.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder: str | None = None
        self.identity: tuple[int, int] | None = None
        self.entries: dict[str, dict[str, str]] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
            data = json.loads(path.read_text())
            self.folder = data["folder"] if data.get("folder") in FOLDER_NAMES else None
            self.identity = tuple(data["identity"]) if data.get("identity") else None  # type: ignore[assignment]
            self.entries = {str(k): dict(v) for k, v in data.get("entries", {}).items()}

    def forget(self) -> None:
        """Nothing of DCloud's is left in the workdir: the record goes."""
        self.folder, self.identity, self.entries = None, None, {}
        self.save()

    def save(self) -> None:
        """Written (atomically) before each step it describes, so a crash leaves a true record."""
        if self.folder is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data: dict[str, Any] = {"folder": self.folder, "identity": self.identity, "entries": self.entries}
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps(data))
        os.replace(partial, self.path)


class DatasetViews:
    """The dataset views of one server: ``workdir`` is the user's, ``record`` the hub's own file."""

    def __init__(self, workdir: Path, record: Path) -> None:
        self.workdir = workdir
        self.record = Record(record)

    @property
    def folder(self) -> Path | None:
        """Where the views are now (None: there are none)."""
        return self.workdir / self.record.folder if self.record.folder else None

    def _open_workdir(self) -> int:
        # the workdir itself is trusted: under the hub's server root, or a home directory
        # whose parent is root's
        return open_dir(self.workdir)

    def clear(self) -> list[str]:
        """Remove what the record says DCloud made; return what was found changed and left alone."""
        record = self.record
        if record.folder is None:
            return []
        left: list[str] = []
        try:
            parent = self._open_workdir()
        except FileNotFoundError:
            record.forget()
            return []
        try:
            left = self._clear_in(parent, record.folder)
        finally:
            os.close(parent)
        self._detach_strays()
        record.forget()
        return left

    def _detach_strays(self) -> None:
        """Detach DCloud's bind mounts that left its folder with it (the user renamed or moved
        the folder): found in mountinfo below the workdir by the source they show."""
        sources = [made["source"] for made in self.record.entries.values() if made.get("kind") == "mount"]
        if not sources:
            return
        mounts = _mountinfo()
        origins = {origin for origin in (_bind_origin(src, mounts) for src in sources) if origin}
        workdir = os.path.realpath(self.workdir)
        strays = [point for device, root, point in mounts
                  if point.startswith(workdir + "/") and (device, root.removesuffix("//deleted")) in origins]
        for point in sorted(strays, key=len, reverse=True):
            with contextlib.suppress(OSError):
                _detach_path(self.workdir, os.path.relpath(point, workdir))

    def _clear_in(self, parent: int, name: str) -> list[str]:
        record = self.record
        try:
            info = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return []
        if not stat.S_ISDIR(info.st_mode):
            return [f"{name} (no longer DCloud's folder)"]  # the user put a file or link there
        if record.identity is not None and (info.st_dev, info.st_ino) != record.identity:
            return [f"{name} (no longer DCloud's folder)"]  # the user made a folder of their own there
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except OSError:
            return [f"{name} (no longer DCloud's folder)"]  # swapped for a link since the lstat
        left: list[str] = []
        try:
            if record.identity is not None:
                os.fchmod(fd, 0o700)  # build() made it read-only to the server
            for entry, made in record.entries.items():
                if not self._remove_entry(fd, entry, made):
                    left.append(f"{name}/{entry}")
            for entry in os.listdir(fd):
                if entry not in record.entries:
                    left.append(f"{name}/{entry}")
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOTDIR):
                raise
            # the user's things are in it: it stays, theirs to use
            with contextlib.suppress(OSError):
                handle = os.open(name, _DIR, dir_fd=parent)
                try:
                    os.fchmod(handle, 0o755)
                finally:
                    os.close(handle)
        return left

    @staticmethod
    def _remove_entry(fd: int, entry: str, made: dict[str, str]) -> bool:
        """Remove one entry DCloud made, if it is still what DCloud made; False when left alone."""
        try:
            info = os.lstat(entry, dir_fd=fd)
        except FileNotFoundError:
            return True
        if made.get("kind") == "link":
            if stat.S_ISLNK(info.st_mode) and os.readlink(entry, dir_fd=fd) == made.get("source"):
                os.unlink(entry, dir_fd=fd)
                return True
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
        _detach(fd, entry)
        try:
            os.rmdir(entry, dir_fd=fd)  # an (empty) former mount point: never recursive
        except OSError:
            return False  # still mounted (the hub may not unmount) or holds something else
        return True

    def _choose_folder(self, parent: int) -> str:
        for name in FOLDER_NAMES:
            try:
                os.lstat(name, dir_fd=parent)
            except FileNotFoundError:
                return name
        raise FolderTaken(FOLDER_NAMES)

    def build(self, sources: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """Make one view per (id, source directory); return id -> "read-only" or "linked".

        Clears DCloud's earlier views first (a start after a stop, or after a crash).
        """
        self.clear()
        sources = list(sources)
        if not sources:
            return {}
        record = self.record
        parent = self._open_workdir()
        try:
            name = self._choose_folder(parent)
            record.folder = name
            record.save()  # before the mkdir: a crash right after it leaves an empty folder we may remove
            os.mkdir(name, 0o700, dir_fd=parent)  # the hub's own: the user cannot add entries
            fd = os.open(name, _DIR, dir_fd=parent)  # fails if swapped for a link meanwhile
        finally:
            os.close(parent)
        how = {}
        try:
            info = os.fstat(fd)
            record.identity = (info.st_dev, info.st_ino)
            record.save()
            for dataset_id, source in sources:
                how[dataset_id] = self._make_entry(fd, dataset_id, source)
            # the folder itself cannot gain or lose entries from the server
            os.fchmod(fd, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        finally:
            os.close(fd)
        return how

    def _make_entry(self, fd: int, dataset_id: str, source: Path) -> str:
        entries = self.record.entries
        if os.geteuid() == 0:
            entries[dataset_id] = {"kind": "mount", "source": str(source)}
            self.record.save()
            if _bind_read_only(source, fd, dataset_id):
                return "read-only"
        entries[dataset_id] = {"kind": "link", "source": str(source)}
        self.record.save()
        os.symlink(source, dataset_id, target_is_directory=True, dir_fd=fd)
        return "linked"


def _bind_read_only(source: Path, folder_fd: int, name: str) -> bool:
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
