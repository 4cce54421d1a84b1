"""Locating, and if asked building, the control-plane binaries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .layout import BINARIES, BUILD_SCRIPT, NODE_BINARIES, TOOL_BINARIES, bin_dir, kueue_manifests_dir, stages_dir


class BuildFailed(RuntimeError):
    """build.sh failed or did not produce every binary."""


def missing() -> list[str]:
    """Binaries (and the KWOK stage directory) that are not there yet."""
    gone = [name for name in BINARIES if not os.access(bin_dir() / name, os.X_OK)]
    if not (stages_dir() / "fast" / "kustomization.yaml").is_file():
        gone.append("stages/fast")
    return gone


def node_missing() -> list[str]:
    """The real node's binaries (kubelet, containerd) that are not there yet. Without them the
    cluster still runs, only without node real-0."""
    return [name for name in NODE_BINARIES if not os.access(bin_dir() / name, os.X_OK)]


def tools_missing() -> list[str]:
    """Helm, Kueue's manager and manifests, and the volume provisioner, that are not there yet."""
    gone = [name for name in TOOL_BINARIES if not os.access(bin_dir() / name, os.X_OK)]
    if not (kueue_manifests_dir() / "webhook" / "manifests.yaml").is_file():
        gone.append("kueue/webhook")
    return gone


def ensure(build: bool = True) -> Path:
    """Return the binary directory, running build.sh first when something is missing.

    Raises ``FileNotFoundError`` when a control-plane binary is missing and ``build`` is false,
    and ``BuildFailed`` when the build fails (its output went to stderr). With ``build`` false,
    missing node binaries are not an error here: the real node reports itself unavailable.
    """
    gone = missing()
    if gone and not build:
        raise FileNotFoundError(f"not built in {bin_dir()}: {', '.join(gone)}")
    if build and (gone or node_missing() or tools_missing()):
        # The build writes a lot; keep stdout free for the kubeconfig path `up` prints.
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=2, check=False)
        if result.returncode != 0 or missing() or node_missing() or tools_missing():
            left = missing() + node_missing() + tools_missing()
            raise BuildFailed(f"{BUILD_SCRIPT} failed (exit {result.returncode}): {left}")
    return bin_dir()
