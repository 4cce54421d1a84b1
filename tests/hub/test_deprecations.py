"""A newcomer's start says nothing is deprecated: `dcloud demo` (JupyterHub 6.1 logs its
deprecated settings: extra_handlers, DummyAuthenticator.password) and building the wheel
(setuptools warns about a ``project.license`` table)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT
from tests.support.hub import start_demo_hub, stop_demo_hub

DEPRECATED = re.compile(r"deprecat", re.IGNORECASE)


def test_demo_hub_starts_without_a_deprecation_warning(tmp_path, monkeypatch):
    # Python's DeprecationWarnings are shown too, where they come from DCloud's own code.
    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning")
    hub = start_demo_hub(tmp_path / "demo")
    try:
        assert hub.get("/services/dcloud/")[0] in (200, 302)  # the service answered through the proxy
    finally:
        stop_demo_hub(hub)
    log = (tmp_path / "demo" / "hub.log").read_text()
    assert "JupyterHub is now running" in log
    warned = [line for line in log.splitlines() if DEPRECATED.search(line)]
    assert not warned, "\n".join(warned)
    # JupyterHub's own words for the two settings DCloud used to have
    assert "extra_handlers is deprecated" not in log
    assert "DummyAuthenticator.password is deprecated" not in log


def test_wheel_builds_without_a_deprecation_warning(tmp_path):
    """``pip wheel`` builds in an isolated environment with the declared setuptools (>= 77, which
    reads the SPDX ``license`` string); it needs that setuptools from the index or pip's cache."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-v", "-w", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if result.returncode != 0 and re.search(r"No matching distribution|Could not find a version|NewConnectionError",
                                            output):
        pytest.skip("setuptools>=77 for the isolated build is neither reachable nor in pip's cache")
    assert result.returncode == 0, output[-3000:]
    assert not [line for line in output.splitlines() if DEPRECATED.search(line)], output[-3000:]
    (wheel,) = tmp_path.glob("dcloud_spawner-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    assert "License-Expression: BSD-3-Clause" in metadata.splitlines()
    assert not [line for line in metadata.splitlines() if line.startswith("License:")]
