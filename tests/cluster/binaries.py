"""Locating, and if asked building, the control-plane binaries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .layout import BINARIES, BUILD_SCRIPT, bin_dir, stages_dir


class BuildFailed(RuntimeError):
    """build.sh failed or did not produce every binary."""


def missing() -> list[str]:
    """Binaries (and the KWOK stage directory) that are not there yet."""
    gone = [name for name in BINARIES if not os.access(bin_dir() / name, os.X_OK)]
    if not (stages_dir() / "fast" / "kustomization.yaml").is_file():
        gone.append("stages/fast")
    return gone


def ensure(build: bool = True) -> Path:
    """Return the binary directory, running build.sh first when something is missing.

    Raises ``FileNotFoundError`` when something is missing and ``build`` is false, and
    ``BuildFailed`` when the build fails (its output went to stderr).
    """
    gone = missing()
    if gone and not build:
        raise FileNotFoundError(f"not built in {bin_dir()}: {', '.join(gone)}")
    if gone:
        # The build writes a lot; keep stdout free for the kubeconfig path `up` prints.
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=2, check=False)
        if result.returncode != 0 or missing():
            raise BuildFailed(f"{BUILD_SCRIPT} failed (exit {result.returncode}): {missing()}")
    return bin_dir()
