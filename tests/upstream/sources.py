"""Where the upstream projects' own test suites come from, at the versions installed in .venv.

Each suite's tests are taken, first match wins, from:

1. the installed package, where its wheel ships them (JupyterHub, OAuthenticator);
2. its PyPI sdist, ``pip download --no-binary :all: --no-deps NAME==VERSION``, extracted;
3. for KubeSpawner, whose wheel and sdist both leave ``tests/`` out (hatch ``include =
   ["kubespawner"]``): the GitHub archive of the release tag, downloaded while GitHub answers.

Everything is cached under ``~/.cache/dcloud-upstream`` (``DCLOUD_UPSTREAM_CACHE``), never in the
repository; with the cache filled nothing is downloaded again. The sdist is always fetched: it
holds the upstream's own pytest configuration (``pytest.ini``/``pyproject.toml``), which the
wheel does not ship. ``python -m tests.upstream.sources fetch`` fills the cache (``.ci/setup``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("DCLOUD_UPSTREAM_CACHE", "~/.cache/dcloud-upstream")).expanduser()


class Unavailable(Exception):
    """An upstream suite's sources cannot be had here; the message says why."""


@dataclass(frozen=True)
class Suite:
    """One upstream test suite, run against DCloud's class in place of upstream's."""

    name: str  # the key in expected_failures and the test id
    distribution: str  # PyPI name; its installed version is the one tested
    package: str  # the import package; its parent directory is the suite's root
    tests: tuple[str, ...]  # what to run, relative to the root: files or directories
    marker: str  # a file that is there when a tree holds the suite (a bare `tests` could be anyone's)
    ini: str  # the upstream's pytest configuration file, in its sdist
    # overrides of that configuration: plugins upstream uses that DCloud does not install
    options: tuple[str, ...] = ()
    github: str = ""  # owner/name, only for suites that ship tests in no PyPI artefact


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            name="jupyterhub",
            distribution="jupyterhub",
            package="jupyterhub",
            tests=("jupyterhub/tests/test_spawner.py",),
            marker="jupyterhub/tests/test_spawner.py",
            ini="pytest.ini",
        ),
        Suite(
            name="oauthenticator",
            distribution="oauthenticator",
            package="oauthenticator",
            tests=("oauthenticator/tests/test_generic.py",),
            marker="oauthenticator/tests/test_generic.py",
            ini="pyproject.toml",
            options=("-o", "addopts=--verbose"),  # upstream's addopts has --cov (pytest-cov)
        ),
        Suite(
            name="kubespawner",
            distribution="jupyterhub-kubespawner",
            package="kubespawner",
            # every test file; those that use the cluster run on node real-0 (tests/upstream/cluster.py)
            tests=(
                "tests/test_objects.py",
                "tests/test_profile.py",
                "tests/test_slugs.py",
                "tests/test_utils.py",
                "tests/test_clients.py",
                "tests/test_spawner.py",
            ),
            marker="tests/test_spawner.py",
            ini="pyproject.toml",
            # The suite pins pytest-asyncio<0.23, whose one event loop served the whole session (its
            # conftest's session `event_loop`): the session-scoped kube_client is used by every
            # test. pytest-asyncio 1.x ignores that fixture; these options give the same one loop.
            options=(
                "-o",
                "asyncio_default_fixture_loop_scope=session",
                "-o",
                "asyncio_default_test_loop_scope=session",
            ),
            github="jupyterhub/kubespawner",
        ),
    )
}


def version(suite: Suite) -> str:
    return importlib.metadata.version(suite.distribution)


def _sdist_name(suite: Suite) -> str:
    # sdists are named after the normalised project name (PEP 625): jupyterhub_kubespawner-7.1.0
    return f"{suite.distribution.replace('-', '_')}-{version(suite)}"


def _extract(archive: Path, into: Path) -> Path:
    """Extract ``archive`` (one top-level directory) to ``into``, atomically."""
    partial = into.with_name(into.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    (top,) = partial.iterdir()
    top.rename(into)
    partial.rmdir()
    return into


def sdist(suite: Suite) -> Path:
    """The suite's sdist, extracted in the cache; downloaded with pip when absent."""
    name = _sdist_name(suite)
    tree = CACHE / name
    if tree.is_dir():
        return tree
    archive = CACHE / f"{name}.tar.gz"
    if not archive.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        spec = f"{suite.distribution}=={version(suite)}"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", spec, "-d", CACHE],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not archive.is_file():
            raise Unavailable(f"pip download {spec} failed: {done.stderr.strip()[-500:]}")
    return _extract(archive, tree)


def _github_tree(suite: Suite) -> Path:
    """The release tag's source, from an archive placed in the cache by hand: these tests ship in
    no registry artefact, and CI reaches only the package registries, never GitHub."""
    tree = CACHE / f"{_sdist_name(suite)}-github"
    if tree.is_dir():
        return tree
    archive = CACHE / f"{tree.name}.tar.gz"
    if not archive.is_file():
        raise Unavailable(
            f"{suite.distribution} {version(suite)} ships its tests in neither its wheel nor its sdist; to run "
            f"them, put GitHub's archive of tag {version(suite)} of {suite.github} at {archive}"
        )
    return _extract(archive, tree)


def root(suite: Suite) -> Path:
    """The directory the suite's ``tests`` are relative to; raises Unavailable."""
    module = importlib.util.find_spec(suite.package)
    assert module is not None and module.origin is not None, suite.package
    installed = Path(module.origin).parent.parent
    if (installed / suite.marker).is_file():
        return installed
    tree = sdist(suite)
    if (tree / suite.marker).is_file():
        return tree
    if not suite.github:
        raise Unavailable(f"{suite.distribution} {version(suite)}: {suite.marker} in neither wheel nor sdist")
    return _github_tree(suite)


def ini(suite: Suite) -> Path:
    return sdist(suite) / suite.ini


def fetch() -> int:
    """Fill the cache for every suite (``.ci/setup``); returns the number that failed."""
    failed = 0
    for suite in SUITES.values():
        try:
            where = root(suite)
            ini(suite)
        except Unavailable as error:
            print(f"upstream tests: {suite.name}: {error}", file=sys.stderr)
            failed += 1
        else:
            print(f"upstream tests: {suite.name} {version(suite)}: {where}")
    return failed


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m tests.upstream.sources fetch")
    sys.exit(1 if fetch() else 0)
