#!/usr/bin/env bash
# Fills an empty directory with a minimal Debian bookworm that has Python 3.11: the
# bottom layer of the stand-in bases (images/README.md, "Local builds"). Must run as root
# (debootstrap chroots and sets file owners). Called by tests/cluster/images.py with a
# buildah container's mount point, so the tree becomes the image without a copy.
#
#   debian-rootfs.sh TARGET_DIR [DEB_CACHE_DIR]
#
# The mirror is the one apt on this machine already uses (no image registry is
# reachable, a Debian mirror is); DEBIAN_MIRROR overrides it.
set -euo pipefail

target="$1"
debs="${2:-}"

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # deb822 (".sources", "URIs: ...") or one-line ("deb URL bookworm main") entries.
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
  if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
               | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
               | head -n 1)
  fi
fi
mirror="${mirror:-http://deb.debian.org/debian}"

# minbase: essential packages and apt only. python3 brings the whole standard library
# (sqlite3, ssl, ...), which JupyterHub and JupyterLab import. No python3-venv: the
# stand-ins make their environments with `venv --without-pip` and install pip from its
# wheel, which avoids Debian's older pip being installed and then replaced.
args=(--variant=minbase --include=python3 bookworm "$target" "$mirror")
if [ -n "$debs" ]; then
  mkdir -p "$debs"
  args=(--cache-dir="$debs" "${args[@]}")
fi
debootstrap "${args[@]}"

# What an image does not need: downloaded packages, package lists (apt update restores
# them), documentation, translations. About 100 MB of the 275 MB debootstrap leaves.
rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* \
       "$target"/usr/share/doc/* "$target"/usr/share/man/* "$target"/usr/share/info/* \
       "$target"/usr/share/locale/* "$target"/var/log/*.log "$target"/var/log/apt/*
# debootstrap copies the host's resolver configuration and name; an image must not carry them
# (the container runtime mounts its own).
: > "$target/etc/resolv.conf"
: > "$target/etc/hostname"
