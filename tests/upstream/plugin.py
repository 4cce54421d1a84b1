"""pytest plugin for an upstream suite run in a subprocess (``-p tests.upstream.plugin``).

It puts DCloud's class where the suite expects upstream's, and writes each test's outcome to
``$DCLOUD_UPSTREAM_REPORT`` (JSON) for tests/upstream/test_upstream.py to judge.

The substitution happens when this module is imported: ``-p`` plugins are imported before the
suite's conftest and test modules, which bind the class by name at import
(``from kubespawner import KubeSpawner``), so they bind DCloud's. DCloud's own modules are
imported first, so DCloud's classes keep upstream's as their bases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

SUITE = os.environ["DCLOUD_UPSTREAM_SUITE"]
REPORT = Path(os.environ["DCLOUD_UPSTREAM_REPORT"])
DEMO_CATALOG = str(files("dcloud_spawner.demo") / "catalog.yaml")


def _set_default(cls: type, trait: str, value: Any) -> None:
    """Change a trait's static default: the suites build spawners with their own config, so a
    default is the one setting every instance sees (a trait a test sets still wins)."""
    cls.class_traits()[trait].default_value = value


def _substitute() -> None:
    from dcloud_spawner.hub.mixin import DCloudMixin

    _set_default(DCloudMixin, "catalog_path", DEMO_CATALOG)
    if SUITE == "jupyterhub":
        import jupyterhub.spawner

        from dcloud_spawner.local import DCloudLocalSpawner

        # servers' working directories in this run's temporary directory, not the user's home
        _set_default(DCloudLocalSpawner, "server_root", os.environ["DCLOUD_UPSTREAM_TMP"])
        # SimpleLocalProcessSpawner is LocalProcessSpawner without system users: what
        # DCloudLocalSpawner is by default (run_as_system_users=False). The hub fixture's
        # MockSpawner subclasses it too, so the hub-level tests spawn DCloud's as well.
        jupyterhub.spawner.LocalProcessSpawner = DCloudLocalSpawner
        jupyterhub.spawner.SimpleLocalProcessSpawner = DCloudLocalSpawner
    elif SUITE == "oauthenticator":
        import oauthenticator
        import oauthenticator.generic

        from dcloud_spawner.hub.login import DCloudOAuthenticator

        oauthenticator.generic.GenericOAuthenticator = DCloudOAuthenticator
        oauthenticator.GenericOAuthenticator = DCloudOAuthenticator
    elif SUITE == "kubespawner":
        import kubespawner
        import kubespawner.spawner

        from dcloud_spawner.kube import DCloudSpawner

        kubespawner.KubeSpawner = DCloudSpawner
        kubespawner.spawner.KubeSpawner = DCloudSpawner
    else:
        raise ValueError(f"unknown upstream suite {SUITE!r}")


# "0": the baseline run, upstream's own classes, to tell DCloud's failures from the suite's own
if os.environ.get("DCLOUD_UPSTREAM_SUBSTITUTE", "1") == "1":
    _substitute()


@pytest.fixture(autouse=True)
def _dcloud_fresh_hub_state() -> Iterator[None]:
    """As tests/conftest.py does for DCloud's tests: quota claims and GPU reservations live in
    hub-wide state, which must not leak from one upstream test into the next."""
    from dcloud_spawner.hub.state import reset_hub_state

    yield
    reset_hub_state()


# node id -> {"outcome": passed|failed|skipped|xfailed|xpassed, "message": first line of why}
_results: dict[str, dict[str, str]] = {}


def _message(report: pytest.CollectReport | pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        text = report.longrepr[2]
    else:
        text = str(report.longrepr or "")
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    previous = _results.get(report.nodeid, {}).get("outcome")
    if previous == "failed":
        return  # a test that failed in setup or call stays failed whatever teardown says
    if report.failed:
        # an error in setup or teardown counts as a failure: the test did not pass
        outcome = "xpassed" if hasattr(report, "wasxfail") else "failed"  # xpassed: strict xfail
        _results[report.nodeid] = {"outcome": outcome, "message": f"{report.when}: {_message(report)}"}
    elif report.skipped:
        outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        _results[report.nodeid] = {"outcome": outcome, "message": _message(report)}
    elif report.when == "call":
        _results[report.nodeid] = {"outcome": "xpassed" if hasattr(report, "wasxfail") else "passed", "message": ""}


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _results[report.nodeid or "<collection>"] = {"outcome": "failed", "message": f"collect: {_message(report)}"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    REPORT.write_text(json.dumps(_results, indent=1, sort_keys=True))
