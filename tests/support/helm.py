"""Helm and the Zero to JupyterHub 4.4.0 chart, as the deployment tests use them.

The chart is found, first match wins, at ``$DCLOUD_Z2JH_CHART``; at the source copy in
``../shared/z2jh-4.4.0/chart/jupyterhub`` beside the repository; or at the released chart that
``python -m tests.support.helm pull`` (run by ``.ci/setup``) fetches with ``helm pull`` from the chart
repository into ``~/.cache/dcloud-helm``. Helm itself is built by ``tests/cluster/build.sh``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

from tests.cluster.layout import bin_dir

ROOT = Path(__file__).resolve().parents[2]
CHART_VERSION = "4.4.0"
CHART_REPOSITORY = "https://hub.jupyter.org/helm-chart/"
SHARED_CHART = ROOT.parent / "shared" / f"z2jh-{CHART_VERSION}" / "chart" / "jupyterhub"
VALUES = ROOT / "helm-values" / "values.yaml"
RBAC = ROOT / "helm-values" / "rbac.yaml"
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"
CATALOG_FILE = "dcloud-catalog"  # the hub.extraFiles key docs/deploy.md's --set-file targets
RELEASE = "dcloud"


def cached_chart() -> Path:
    """Where ``pull`` puts the released chart."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "dcloud-helm" / f"z2jh-{CHART_VERSION}" / "jupyterhub"


def chart_dir() -> Path:
    """The chart the tests render: the setting, else ../shared's source, else the pulled release."""
    setting = os.environ.get("DCLOUD_Z2JH_CHART")
    if setting:
        return Path(setting)
    return SHARED_CHART if (SHARED_CHART / "Chart.yaml").is_file() else cached_chart()


def helm_binary() -> Path:
    return bin_dir() / "helm"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail with CI=true, where a test cannot run."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: deployment tests must run)", pytrace=False)
    pytest.skip(reason)


def require_helm_and_chart() -> tuple[Path, Path]:
    helm, chart = helm_binary(), chart_dir()
    if not helm.is_file():
        unavailable(f"helm not built at {helm}: run tests/cluster/build.sh")
    if not (chart / "Chart.yaml").is_file():
        unavailable(f"the Zero to JupyterHub chart is not at {chart}: set DCLOUD_Z2JH_CHART or run "
                    "`python -m tests.support.helm pull` (needs the chart repository)")  # fmt: skip
    return helm, chart


def helm(*args: str, kubeconfig: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run helm; on failure raise with its stderr."""
    env = {**os.environ, "HELM_CACHE_HOME": str(cached_chart().parent.parent / "helm-cache")}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def value_args(
    values: Iterable[Path] = (), set_files: Mapping[str, Path] | None = None, catalog: Path | None = EXAMPLE_CATALOG
) -> list[str]:
    """``--values`` for helm-values/values.yaml and then ``values``, and docs/deploy.md's
    ``--set-file`` of the catalog (none with ``catalog=None``)."""
    args = ["--values", str(VALUES)]
    for path in values:
        args += ["--values", str(path)]
    files = dict(set_files or {})
    if catalog is not None:
        files.setdefault(f"hub.extraFiles.{CATALOG_FILE}.stringData", catalog)
    for key, path in files.items():
        args += ["--set-file", f"{key}={path}"]
    return args


def template(namespace: str, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``args`` (see :func:`value_args`): the objects."""
    _, chart = require_helm_and_chart()
    out = helm("template", RELEASE, str(chart), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """helm-values/rbac.yaml for a release in ``namespace``, as its header says to apply it."""
    return [doc for doc in yaml.safe_load_all(rbac_text(namespace)) if doc]


def rbac_text(namespace: str) -> str:
    """``NAMESPACE=<namespace> envsubst < helm-values/rbac.yaml``."""
    from string import Template

    return Template(RBAC.read_text()).substitute(NAMESPACE=namespace)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise LookupError(f"{len(matches)} objects {kind}/{name} rendered")
    return matches[0]


def pull(repository: str = CHART_REPOSITORY) -> Path:
    """Fetch the released chart into the cache unless a chart is already found; idempotent."""
    chart = chart_dir()
    if (chart / "Chart.yaml").is_file():
        return chart
    return pull_release(cached_chart(), repository)


def pull_release(target: Path, repository: str = CHART_REPOSITORY) -> Path:
    """``helm pull`` of chart ``jupyterhub`` at CHART_VERSION from ``repository``, unpacked
    so that ``target`` is the chart's folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    helm("pull", "jupyterhub", "--repo", repository, "--version", CHART_VERSION,
         "--untar", "--untardir", str(target.parent))  # fmt: skip
    if not (target / "Chart.yaml").is_file():
        raise RuntimeError(f"helm pull left no chart at {target}")
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["pull"]:
        sys.exit("usage: python -m tests.support.helm pull")
    print(pull())
