"""The ``kube_cluster`` pytest fixture: the Kubernetes cluster integration tests run against.

Resolution, first match wins:

1. ``DCLOUD_TEST_KUBECONFIG`` is set: use that cluster as it is (admin and hub kubeconfig are both
   that file, namespace ``$DCLOUD_TEST_NAMESPACE`` or ``dcloud``); the harness objects (fleet,
   namespace, hub account, datasets) are created where those credentials may.
2. The local harness: reuse the cluster ``python -m tests.cluster up`` left running, or start
   one and stop it at the end of the session. Outside CI a missing build skips; with ``CI=true``
   the binaries are built first.
3. Otherwise skip, except with ``CI=true``: there a cluster test that cannot run fails.

``kueue_cluster`` is the same cluster, required to run Kueue's manager (see kueue.py): with the
local harness, ``run`` is set, so a test can stop Kueue with ``kueue.stopped(run)``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from . import binaries, fleet, harness, kueue
from .layout import BUILD_SCRIPT, RunDir


@dataclass(frozen=True)
class KubeCluster:
    """Where the tests find the cluster."""

    admin_kubeconfig: str  # cluster-admin (system:masters)
    hub_kubeconfig: str  # ServiceAccount `hub` with Zero to JupyterHub's RBAC
    namespace: str  # restricted Pod Security; the hub's Role lives here
    run: RunDir | None = None  # the local harness's run directory; None with DCLOUD_TEST_KUBECONFIG


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip, or in CI fail: there a cluster test that does not run is a defect."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: cluster tests must run)", pytrace=False)
    pytest.skip(reason)


def external(kubeconfig: str, namespace: str) -> KubeCluster:
    if not Path(kubeconfig).is_file():
        unavailable(f"DCLOUD_TEST_KUBECONFIG={kubeconfig} does not exist")
    api = kube_config.new_client_from_config(config_file=kubeconfig)
    with api:
        setup = fleet.apply(api, namespace, harness.RBAC_FILE, forgiving=True, wait=False)
        try:
            rbac = client.RbacAuthorizationV1Api(api)
            fleet.apply_extra_rbac(rbac, harness.KUEUE_RBAC_FILE, namespace, source=harness.KUEUE_RBAC_SOURCE)
        except ApiException as error:
            if error.status not in (401, 403):
                raise
            setup.skipped.append(f"{harness.KUEUE_RBAC_FILE}: {error.status} {error.reason}")
        try:
            fleet.wait_namespace_usable(client.CoreV1Api(api), namespace, timeout=30)
        except TimeoutError as error:
            setup.skipped.append(str(error))
    for skipped in setup.skipped:
        warnings.warn(f"cluster setup skipped {skipped}", stacklevel=1)
    return KubeCluster(kubeconfig, kubeconfig, namespace)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> KubeCluster:
    """The cluster for this test session; see the module docstring for where it comes from."""
    kubeconfig = os.environ.get("DCLOUD_TEST_KUBECONFIG")
    if kubeconfig:
        return external(kubeconfig, os.environ.get("DCLOUD_TEST_NAMESPACE", fleet.NAMESPACE))
    missing = binaries.missing()
    if missing and not in_ci():
        unavailable(
            f"cluster binaries not built ({', '.join(missing)}): run {BUILD_SCRIPT} or set DCLOUD_TEST_KUBECONFIG"
        )
    try:
        cluster = harness.up(build=in_ci())
    except (FileNotFoundError, binaries.BuildFailed) as error:
        # A failed build; a cluster that is built but does not start is an error, not a skip.
        unavailable(f"local cluster unavailable: {error}")
    if cluster.started:
        request.addfinalizer(lambda: harness.down(cluster.run))
    return KubeCluster(
        admin_kubeconfig=str(cluster.admin_kubeconfig),
        hub_kubeconfig=str(cluster.hub_kubeconfig),
        namespace=cluster.namespace,
        run=cluster.run,
    )


@pytest.fixture(scope="session")
def kueue_cluster(kube_cluster: KubeCluster) -> KubeCluster:
    """``kube_cluster``, with Kueue's manager running and ready (webhooks and visibility API).
    Skips (fails with ``CI=true``) when Kueue cannot run here."""
    if kube_cluster.run is None:
        with kube_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig) as api:
            try:
                kueue.wait_ready_external(api, timeout=10)
            except TimeoutError as error:
                unavailable(f"Kueue is not running in the DCLOUD_TEST_KUBECONFIG cluster: {error}")
        return kube_cluster
    note = kueue.unavailable_note(kube_cluster.run)
    if note is not None:
        unavailable(f"no Kueue in the local cluster: {note}")
    return kube_cluster
