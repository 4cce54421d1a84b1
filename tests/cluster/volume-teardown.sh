#!/bin/sh
# Removes one volume made by volume-setup.sh, when its claim is deleted: its path first (no pod
# can start on it from then on), then the mount (its loop device detaches itself then), the
# image and the mount point. Run by local-path-provisioner's helper pod on real-0, like the setup.
set -eu

image="$VOL_DIR.ext4"
point="$VOL_DIR.mnt"
rm -rf "$VOL_DIR" # the link itself, not what it points to
if mountpoint -q "$point"; then
  umount "$point"
fi
rm -f "$image"
rm -rf "$point" # unmounted: only the empty mount point is left
echo "volume $VOL_DIR removed"
