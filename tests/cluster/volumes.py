"""The volumes of node real-0 as the host sees them: what volume-setup.sh makes, and growing it.

Each volume, under the run's shared volumes folder, is an ext4 image file ``<dir>.ext4``,
loop-mounted at ``<dir>.mnt``; its path ``<dir>`` (the PersistentVolume's) is a link to
``<dir>.mnt/data``, so it exists only while the image is mounted. Growing it is the expansion a
CSI driver would do, in one of two ways:

- **online** (:func:`grow_online`), while pods use it: the image file grows, the loop device
  re-reads its size (``losetup --set-capacity``) and ``resize2fs`` grows the mounted file system.
  Linux allows that only with ``CAP_SYS_RESOURCE`` (the ``EXT4_IOC_RESIZE_FS`` ioctl);
- **offline** (:func:`grow_offline`), where that capability is missing (as on the 2-core test VMs,
  whose root lacks it): only when nothing else has the file system mounted. It is unmounted (its
  path dangles: a pod starting meanwhile finds no folder and its kubelet retries, rather than
  getting an empty folder on the host's disk), checked (``e2fsck``), grown (``resize2fs``) and
  mounted again.

Imports nothing but the standard library, so it can run (and be tried) on a bare machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

IMAGE_SUFFIX = ".ext4"  # volume-setup.sh: the image of volume DIR is DIR.ext4,
MOUNT_SUFFIX = ".mnt"  # mounted at DIR.mnt; DIR links to DIR.mnt/data
CAP_SYS_RESOURCE = 24  # linux/capability.h
MOUNT_OPTIONS = "loop,noinit_itable"  # as volume-setup.sh mounts it


class VolumeBusy(RuntimeError):
    """Something besides the volume's own path has its file system mounted: it cannot grow
    offline now (nothing was changed)."""


class GrowFailed(RuntimeError):
    """A step of growing failed; the message names it."""


def image_of(volume: Path) -> Path:
    return volume.with_name(volume.name + IMAGE_SUFFIX)


def mount_point_of(volume: Path) -> Path:
    return volume.with_name(volume.name + MOUNT_SUFFIX)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, optional fields, source) of each mount in this mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        point = fields[4].encode().decode("unicode_escape")
        found.append((point, " ".join(fields[6:dash]), fields[dash + 2]))
    return found


def mount_source(point: Path) -> str | None:
    """The device mounted at ``point`` (the topmost mount there), or None."""
    sources = [source for p, _optional, source in mounts() if p == str(point)]
    return sources[-1] if sources else None


def loop_devices(folder: Path) -> dict[str, str]:
    """Loop devices mounted under ``folder``: mount point -> device."""
    prefix = str(folder.resolve()) + "/"
    return {p: s for p, _optional, s in mounts() if p.startswith(prefix) and s.startswith("/dev/loop")}


def attached(device: str) -> bool:
    """Whether a loop device still has a backing file. ``mount -o loop`` sets autoclear: the
    device detaches itself when the last mount of its file system, in any namespace, goes."""
    return Path(f"/sys/block/{Path(device).name}/loop/backing_file").exists()


def filesystem_bytes(point: Path) -> int:
    """The file system's size as ``df`` shows it (its blocks less ext4's own metadata)."""
    stat = os.statvfs(point)
    return stat.f_blocks * stat.f_frsize


def can_grow_online() -> bool:
    """Whether this process may resize a mounted ext4 file system (CAP_SYS_RESOURCE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def _tool(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path) or name


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    result = subprocess.run([_tool(argv[0]), *argv[1:]], capture_output=True, text=True, check=False, timeout=600)
    if result.returncode not in ok:
        raise GrowFailed(f"{' '.join(argv)} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")


def _loop_of(volume: Path) -> tuple[Path, Path, str]:
    image, point = image_of(volume), mount_point_of(volume)
    if not image.is_file():
        raise GrowFailed(f"no image file {image}")
    device = mount_source(point)
    if device is None or not device.startswith("/dev/loop"):
        raise GrowFailed(f"{point} is not loop-mounted (found {device})")
    return image, point, device


def _extend(image: Path, size: int) -> None:
    if image.stat().st_size < size:
        os.truncate(image, size)  # sparse, like the setup's truncate


def grow_online(volume: Path, size: int) -> int:
    """Grow the mounted volume to ``size`` bytes; return the file system's size. Each step is a
    no-op once done, so a failed attempt can simply be repeated."""
    image, point, device = _loop_of(volume)
    _extend(image, size)
    _run("losetup", "--set-capacity", device)
    _run("resize2fs", device)
    return filesystem_bytes(point)


def _wait_detached(device: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while attached(device):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _remount(device: str, image: Path, point: Path) -> None:
    """Mount a file system that is still mounted elsewhere (a container not gone yet) back at
    its mount point: its device is that same file system. Never the image a second time: two
    loop devices on one file corrupt it."""
    try:
        _run("mount", device, str(point))
    except GrowFailed:
        if attached(device):
            raise
        _run("mount", "-o", MOUNT_OPTIONS, str(image), str(point))  # it detached meanwhile


def mounted_elsewhere(volume: Path) -> list[str]:
    """Where else in this mount namespace the volume's file system is mounted (a kubelet's bind
    mount for a pod, say): it cannot grow offline while there are any."""
    device = mount_source(mount_point_of(volume))
    point = str(mount_point_of(volume))
    return [p for p, _optional, source in mounts() if device and source == device and p != point]


def grow_offline(volume: Path, size: int) -> int:
    """Grow the volume to ``size`` bytes while nothing else has its file system mounted; return
    the file system's size. Raises :class:`VolumeBusy` (with the volume as it was) when
    something else still has it mounted."""
    image, point, device = _loop_of(volume)
    if others := mounted_elsewhere(volume):
        raise VolumeBusy(f"{device} is also mounted at {', '.join(others)}")
    busy = True  # until known otherwise: put back as it was
    _run("umount", str(point))  # from here the volume's path dangles
    try:
        # Removing the mount point takes copies of the mount in other mount namespaces with it
        # (a process that unshared the host's mounts); a bind mount of it elsewhere (a
        # container's) or a file open in it keeps the file system, and so the loop device.
        point.rmdir()
        busy = not _wait_detached(device, 5.0)
        if not busy:
            _extend(image, size)
            _run("e2fsck", "-f", "-p", str(image), ok=(0, 1))  # 1: errors corrected, fine
            _run("resize2fs", str(image))
    finally:
        point.mkdir(exist_ok=True)
        if busy:
            _remount(device, image, point)
        else:
            _run("mount", "-o", MOUNT_OPTIONS, str(image), str(point))
    if busy:
        raise VolumeBusy(f"{device} is still in use in another mount namespace")
    return filesystem_bytes(point)
