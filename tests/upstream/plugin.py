"""pytest plugin for an upstream suite run in a subprocess (``-p tests.upstream.plugin``).

It puts DCloud's class where the suite expects upstream's, and writes each test's outcome to
``$DCLOUD_UPSTREAM_REPORT`` (JSON) for tests/upstream/test_upstream.py to judge.

The substitution happens when this module is imported: ``-p`` plugins are imported before the
suite's conftest and test modules, which bind the class by name at import
(``from kubespawner import KubeSpawner``), so they bind DCloud's. DCloud's own modules are
imported first, so DCloud's classes keep upstream's as their bases.

For KubeSpawner's cluster tests (tests/upstream/cluster.py) it also puts the suite's pods on node
real-0, the pods its conftest makes and those its spawners make, and gives the suite's MockUser
the ``groups`` a JupyterHub user has; nothing else of the suite changes.
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
# the demo catalog; with a cluster, the same with the images built here (tests/upstream/cluster.py)
CATALOG = os.environ.get("DCLOUD_UPSTREAM_CATALOG") or str(files("dcloud_spawner.demo") / "catalog.yaml")
# KubeSpawner's suite on real-0: the pod spec fields that place a pod there (cluster.py); else None
_placement = os.environ.get("DCLOUD_UPSTREAM_PLACEMENT")
PLACEMENT: dict[str, Any] | None = json.loads(_placement) if _placement else None


def _set_default(cls: type, trait: str, value: Any) -> Any:
    """Change a trait's static default; returns the one it had. The suites build spawners with
    their own config, so a default is the one setting every instance sees (a trait a test sets
    still wins). traitlets copies a str, number or None default into a per-class cache when each
    class is made (``_static_immutable_initial_values``): the class and its subclasses made so far
    get the new value there too, or their instances would never see it."""
    descriptor = cls.class_traits()[trait]
    before = descriptor.default_value
    descriptor.default_value = value
    made, seen = [descriptor.this_class or cls], set()
    while made:
        klass = made.pop()
        if klass in seen:
            continue
        seen.add(klass)
        cached = klass.__dict__.get("_static_immutable_initial_values")
        if cached is not None and trait in cached:
            cached[trait] = value
        made.extend(klass.__subclasses__())
    return before


def _substitute() -> None:
    from dcloud_spawner.hub.mixin import DCloudMixin

    _set_default(DCloudMixin, "catalog_path", CATALOG)
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


def _place(pod: Any) -> None:
    """Put a pod manifest the suite makes itself (a kubernetes_asyncio V1Pod whose containers are
    dicts, as its conftest writes them) on real-0; its images are there, never pulled."""
    assert PLACEMENT is not None
    pod.spec.node_selector = {**(pod.spec.node_selector or {}), **PLACEMENT["nodeSelector"]}
    pod.spec.tolerations = [*(pod.spec.tolerations or []), *PLACEMENT["tolerations"]]
    for container in pod.spec.containers:
        container["imagePullPolicy"] = "Never"  # ':latest' would default to Always: a pull from quay.io


def pytest_plugin_registered(plugin: object) -> None:
    """KubeSpawner's conftest creates its hub and exec pods through its ``create_resource``; wrap
    it so they land on real-0 (the suite's own pod manifests are left as they are otherwise)."""
    if PLACEMENT is None or SUITE != "kubespawner" or getattr(plugin, "__name__", None) != "conftest":
        return
    create = getattr(plugin, "create_resource", None)
    if create is None:
        return

    async def create_resource(kube_client: Any, kube_ns: str, resource_type: str, manifest: Any,
                              *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        if resource_type == "pod":
            _place(manifest)
        return await create(kube_client, kube_ns, resource_type, manifest, *args, **kwargs)

    plugin.create_resource = create_resource  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """KubeSpawner's test_spawner.py hands spawners a ``MockUser``, a bare ``Mock``: every attribute
    it does not set is another Mock. JupyterHub's users always have ``groups``, a list, which
    DCloud reads (its group policies and quotas; KubeSpawner never does): give MockUser the empty
    list of a user in no group, in both runs, where a Mock would not even iterate."""
    if SUITE != "kubespawner":
        return
    for module in {item.module for item in items if isinstance(item, pytest.Function) and item.module}:
        mock_user = getattr(module, "MockUser", None)
        if isinstance(mock_user, type) and "groups" not in vars(mock_user):
            mock_user.groups = []  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _dcloud_user_pods_on_the_real_node(request: pytest.FixtureRequest) -> Iterator[None]:
    """In KubeSpawner's tests that use the cluster, the spawners' pods go to real-0 too: its node
    selector and tolerations, and nothing pulled, as defaults (what this cluster's admin would
    configure; a test's own setting still wins). DCloud's spawner adds the catalog's on top.

    And a readiness probe on the server's port: the suite checks a started server's URL with 4
    tries a second apart, which jupyterhub-singleuser does not always meet on a loaded 2-core
    machine. KubeSpawner's start (DCloud's too) waits for the container to be ready, so with the
    probe it returns once the server listens, in both runs alike, instead of one run's check
    failing (and leaving its pod to fail the tests after it) by chance."""
    if PLACEMENT is None or SUITE != "kubespawner" or "kube_client" not in request.fixturenames:
        yield
        return
    import kubespawner

    spawner = kubespawner.KubeSpawner  # DCloud's class here, upstream's in the baseline run
    ready = {"readinessProbe": {"tcpSocket": {"port": 8888}, "periodSeconds": 1}}  # the suite's servers' port
    defaults = {"node_selector": dict(PLACEMENT["nodeSelector"]), "tolerations": list(PLACEMENT["tolerations"]),
                "image_pull_policy": "Never", "extra_container_config": ready}  # fmt: skip
    before = {name: _set_default(spawner, name, value) for name, value in defaults.items()}
    try:
        yield
    finally:
        for name, value in before.items():
            _set_default(spawner, name, value)


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
