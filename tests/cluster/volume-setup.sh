#!/bin/sh
# Makes one volume of the test cluster (tests/cluster/storage.py, volumes.py): an ext4 file
# system in an image file of exactly the requested size, so that writes past the size fail with
# ENOSPC ("No space left on device"). Run by local-path-provisioner's helper pod on real-0
# (privileged; the volumes folder is mounted Bidirectional, at the same path as on the host, so
# the mount made here is the host's and the kubelet's too).
# Set by the provisioner: VOL_DIR (the volume's path), VOL_MODE, VOL_SIZE_BYTES.
#
#   VOL_DIR.ext4   the image          VOL_DIR.mnt   where it is loop-mounted
#   VOL_DIR -> VOL_DIR.mnt/data       the volume's path: it exists only while the image is mounted,
#                                     so a pod never gets an empty folder on the host's disk instead
set -eu

image="$VOL_DIR.ext4"
point="$VOL_DIR.mnt"
if [ "$VOL_MODE" != Filesystem ]; then
  echo "volume mode $VOL_MODE: only Filesystem volumes are provided" >&2
  exit 1
fi
if [ -L "$VOL_DIR" ] && mountpoint -q "$point"; then
  exit 0 # a helper pod before this one (a retry) got this far
fi
# Sparse: the host's disk fills as files are written; the file system's size is the limit.
rm -f "$image"
truncate -s "$VOL_SIZE_BYTES" "$image"
# -m 0: no blocks kept back for root, so the pod's own user can fill the volume. 4 KiB blocks
# at every size (mke2fs would pick 1 KiB for small ones). The inode tables are left lazy and
# never zeroed (noinit_itable): a fresh sparse image reads as zeros already.
mkfs.ext4 -q -F -m 0 -b 4096 -E lazy_itable_init=1,nodiscard "$image"
mkdir -p "$point"
# `-o loop` attaches a free loop device with autoclear: it detaches itself at the last unmount.
mount -o loop,noinit_itable "$image" "$point"
# Pods run as their own user, not root: anyone may write, as in local-path-provisioner's setup.
mkdir -p "$point/data"
chmod 0777 "$point/data"
rm -rf "$VOL_DIR" # a plain folder a failed attempt left (never a link's target: rm does not follow)
ln -s "$(basename "$point")/data" "$VOL_DIR"
echo "volume $VOL_DIR: $VOL_SIZE_BYTES bytes, ext4 on $(findmnt -n -o SOURCE --mountpoint "$point")"
