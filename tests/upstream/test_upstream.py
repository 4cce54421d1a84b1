"""The upstream projects' own test suites, run against DCloud's classes.

Each suite (tests/upstream/sources.py) runs in a pytest subprocess of its own, with the
upstream's own pytest configuration and tests/upstream/plugin.py putting DCloud's class in place
of upstream's. The test passes when exactly the tests listed in expected_failures.py fail: a
failure not listed, and a listed test that passes or no longer exists, both fail it, by name.
KubeSpawner's tests that use a cluster run on node real-0 of the harness's cluster, in the same
pytest session (and ``kube_cluster`` fixture) as DCloud's own cluster tests: see cluster.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pytest

from tests.support.real_node import require_real_node

from .cluster import run_env, suite_env
from .expected_failures import DEFECTS_BEING_FIXED, DELIBERATE, EXPECTED_SKIPS, NOT_RUN
from .sources import SUITES, Suite, Unavailable, ini, root, version

REPO = Path(__file__).resolve().parents[2]
CATALOG = Path(str(files("dcloud_spawner.demo") / "catalog.yaml"))  # plugin.py's, less the images
# a whole suite's budget: the JupyterHub one spawns real servers, the KubeSpawner one real pods
SUITE_TIMEOUT = 900
RUNS = ("dcloud", "upstream")  # DCloud's class, and upstream's own as the baseline


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


Results = dict[str, dict[str, str]]  # node id -> {"outcome": ..., "message": ...} (plugin.py)


def judge(results: Results, baseline: Results, expected: dict[str, str], skips: dict[str, str]) -> list[str]:
    """What is wrong with DCloud's run, one line each; empty when it is exactly as listed.

    ``baseline`` is the same suite run with upstream's own class: a test that fails there too
    fails for the suite's own reasons at these versions, not DCloud's, and is not judged. A
    listed test must fail; a test not listed must pass, fail as upstream expects (xfail), or be
    skipped where ``skips`` says why. Skips count only with CI=true, where everything must run."""
    problems: list[str] = []
    for nodeid, result in sorted(results.items()):
        outcome, message = result["outcome"], result["message"]
        upstream_fails = baseline.get(nodeid, {}).get("outcome") in ("failed", "xpassed")
        if nodeid in expected:
            if upstream_fails:
                problems.append(f"listed, but fails with upstream's own class too (not DCloud's doing): {nodeid}")
            elif outcome in ("passed", "xfailed", "xpassed"):
                problems.append(f"listed as failing but {outcome} (remove it from the list): {nodeid}")
            elif outcome == "skipped" and in_ci():  # elsewhere a skip is no problem (no cluster, say)
                problems.append(f"listed as failing but skipped ({message}): {nodeid}")
        elif outcome in ("failed", "xpassed") and not upstream_fails:
            problems.append(f"unexpected failure: {nodeid}: {message}")
        elif outcome == "skipped" and nodeid not in skips and in_ci():
            problems.append(f"skipped (CI=true: an upstream test must run, or be listed): {nodeid}: {message}")
    for nodeid in sorted(set(expected) - set(results)):
        problems.append(f"listed but not run (renamed or removed upstream?): {nodeid}")
    for nodeid in sorted(set(skips) - set(results)):
        problems.append(f"listed skip not run: {nodeid}")
    return problems


def sources(suite: Suite) -> tuple[Path, Path]:
    """The suite's root and its pytest configuration; skips (fails in CI) where they are not here."""
    try:
        return root(suite), ini(suite)
    except Unavailable as error:
        # A suite whose tests are in no registry artefact (KubeSpawner's) cannot be had in CI,
        # which reaches only the registries: it runs where its archive was cached by hand.
        if in_ci() and not suite.github:
            pytest.fail(f"{suite.name}: {error} (CI=true: upstream suites must run)", pytrace=False)
        pytest.skip(f"{suite.name}: {error}")


def start_suite(suite: Suite, workdir: Path, env: dict[str, str], *, substitute: bool) -> subprocess.Popen[str]:
    """Start the suite in a pytest subprocess; ``substitute``: DCloud's class, else upstream's."""
    tests_root, config = sources(suite)
    servers = workdir / "servers"
    servers.mkdir(parents=True)
    command = [
        sys.executable, "-m", "pytest",
        "-p", "tests.upstream.plugin",
        "-c", str(config),  # the upstream's own configuration (asyncio mode, loop scopes, markers)
        "--rootdir", str(tests_root),  # node ids as upstream's: jupyterhub/tests/test_spawner.py::...
        "--confcutdir", str(tests_root),  # only the suite's own conftest files
        "-p", "no:cacheprovider",  # nothing written into site-packages or the cache
        "--color=no", "-q",
        *suite.options,
        # what cannot run here, each with why (expected_failures.NOT_RUN): node id prefixes
        *(arg for nodeid in NOT_RUN.get(suite.name, {}) for arg in ("--deselect", nodeid)),
        *(str(tests_root / path) for path in suite.tests),
    ]  # fmt: skip
    env = {
        **os.environ,
        **env,
        # the venv's scripts (configurable-http-proxy, jupyterhub-singleuser) without activating it
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DCLOUD_UPSTREAM_SUITE": suite.name,
        "DCLOUD_UPSTREAM_SUBSTITUTE": "1" if substitute else "0",
        "DCLOUD_UPSTREAM_REPORT": str(workdir / "report.json"),
        "DCLOUD_UPSTREAM_TMP": str(servers),
    }
    # cwd outside the repository: its pyproject and conftest are DCloud's, not the suite's
    output = (workdir / "output.txt").open("w")
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def finish_suite(process: subprocess.Popen[str], workdir: Path) -> Results:
    try:
        process.wait(timeout=SUITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{workdir.name}: still running after {SUITE_TIMEOUT} s; output in {workdir / 'output.txt'}")
    report = workdir / "report.json"
    if not report.is_file():
        tail = (workdir / "output.txt").read_text()[-4000:]
        pytest.fail(f"{workdir.name}: pytest wrote no report (exit {process.returncode}):\n{tail}", pytrace=False)
    return json.loads(report.read_text())


def run_and_check(suite: Suite, tmp_path: Path, env: dict[str, str],
                  per_run: Callable[[str], dict[str, str]] = lambda _run: {}) -> None:  # fmt: skip
    """Run the suite with DCloud's class and, side by side, with upstream's; judge the first.
    ``per_run``: environment of one run only (by its name in RUNS)."""
    runs = {name: start_suite(suite, tmp_path / name, {**env, **per_run(name)}, substitute=name == "dcloud")
            for name in RUNS}  # fmt: skip
    results = {name: finish_suite(process, tmp_path / name) for name, process in runs.items()}
    dcloud, baseline = results["dcloud"], results["upstream"]
    expected = {**DELIBERATE.get(suite.name, {}), **DEFECTS_BEING_FIXED.get(suite.name, {})}
    problems = judge(dcloud, baseline, expected, EXPECTED_SKIPS.get(suite.name, {}))

    def summary(run: Results) -> str:
        counts: dict[str, int] = {}
        for result in run.values():
            counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))

    upstream_failures = sorted(n for n, r in baseline.items() if r["outcome"] in ("failed", "xpassed"))
    print(f"{suite.name} {version(suite)}: DCloud {summary(dcloud)}; upstream's class {summary(baseline)}")
    for nodeid in upstream_failures:  # said, not hidden: the suite's own failures at these versions
        print(f"  fails with upstream's class too, not judged: {nodeid}: {baseline[nodeid]['message']}")
    assert not problems, (
        f"{suite.name} {version(suite)} against DCloud ({summary(dcloud)}); output in {tmp_path}/*/output.txt:\n  "
        + "\n  ".join(problems)
    )


@pytest.mark.parametrize("name", ["jupyterhub", "oauthenticator"])
def test_upstream_suite(name: str, tmp_path: Path) -> None:
    run_and_check(SUITES[name], tmp_path, {})


def test_kubespawner_suite(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """KubeSpawner's tests. Those that use a cluster run on node real-0 of the harness's cluster
    (tests/upstream/cluster.py); where there is none (outside CI) they skip themselves."""
    sources(SUITES["kubespawner"])  # before the cluster is started for a suite that is not here
    try:
        cluster = request.getfixturevalue("kube_cluster")
        real = require_real_node(cluster)  # the suite's pods really run: KWOK's would only pretend
    except pytest.skip.Exception as why:  # with CI=true these fail instead (fixture.unavailable)
        print(f"KubeSpawner's cluster tests skip: {why}")
    else:
        run_and_check(SUITES["kubespawner"], tmp_path, suite_env(cluster, real, CATALOG, tmp_path), run_env)
        return
    # no cluster: the conftest still loads a kubeconfig at import, and finds no cluster there
    kubeconfig = tmp_path / "offline.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "offline", "user": {"token": "offline"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    }))  # fmt: skip
    run_and_check(SUITES["kubespawner"], tmp_path, {"KUBECONFIG": str(kubeconfig)})


@pytest.mark.parametrize(
    ("results", "problem"),
    [
        ({"t::a": {"outcome": "failed", "message": "boom"}}, "unexpected failure: t::a: boom"),
        ({"t::listed": {"outcome": "passed", "message": ""}}, "listed as failing but passed"),
        ({}, "listed but not run"),
    ],
)
def test_judge_fails_both_ways(results: Results, problem: str) -> None:
    """The checker itself: an unlisted failure, a listed test that passes, a stale entry."""
    expected = {"t::listed": "why"} if "listed" in problem else {}
    problems = judge(results, {}, expected, {})
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_judge_accepts_the_listed_run() -> None:
    results = {"t::ok": {"outcome": "passed", "message": ""}, "t::listed": {"outcome": "failed", "message": "x"}}
    assert judge(results, {}, {"t::listed": "why"}, {}) == []


def test_judge_leaves_upstreams_own_failures_alone() -> None:
    """A test failing with upstream's class too is not DCloud's; listing it is an error."""
    results = {"t::a": {"outcome": "failed", "message": "x"}}
    assert judge(results, results, {}, {}) == []
    assert judge(results, results, {"t::a": "why"}, {})[0].startswith("listed, but fails with upstream's")


@pytest.mark.parametrize("ci", ["true", ""])
def test_judge_counts_skips_only_in_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI a suite's cluster tests skip where there is no cluster, listed ones too; in CI
    a skip, listed or not, is a test that did not run."""
    monkeypatch.setenv("CI", ci)
    results = {"t::listed": {"outcome": "skipped", "message": "no cluster"},
               "t::other": {"outcome": "skipped", "message": "no cluster"}}  # fmt: skip
    problems = judge(results, {}, {"t::listed": "why"}, {})
    assert [p.split(" (")[0].split(":")[0] for p in problems] == (
        ["listed as failing but skipped", "skipped"] if ci else []
    ), problems
