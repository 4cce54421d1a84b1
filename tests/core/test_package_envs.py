"""The package environment installer (core/package_envs.py), run for real with a stand-in pip:
built once, reused without pip, never used half-built, never corrupted by two builds at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dcloud_spawner.core import package_envs
from dcloud_spawner.core.package_envs import env_key, installer_argv

# Stands in for `python -m pip install ...`: writes a package into PIP_TARGET slowly, file by
# file, so that two builds at once overlap; records each run; fails when told to.
FAKE_PIP = r"""
import os, sys, time
target = os.environ["PIP_TARGET"]
with open(os.environ["FAKE_PIP_RUNS"], "a") as runs:
    runs.write(target + "\n")
if os.environ.get("FAKE_PIP_FAIL"):
    open(os.path.join(target, "half.py"), "w").close()
    sys.exit(1)
name = sys.argv[sys.argv.index("--") + 1].split("=")[0]
os.makedirs(os.path.join(target, name), exist_ok=True)
# like pip's RECORD: the files of this one build (their names differ from build to build)
files = [f"part{i}_{os.getpid()}.py" for i in range(20)]
for file in files:
    with open(os.path.join(target, name, file), "w") as f:
        f.write("# part\n")
    time.sleep(float(os.environ.get("FAKE_PIP_DELAY", "0")))
with open(os.path.join(target, name, "RECORD"), "w") as f:
    f.write("\n".join(files))
with open(os.path.join(target, name, "__init__.py"), "w") as f:
    f.write("VALUE = 42\n")
"""


@pytest.fixture
def home(tmp_path) -> Path:
    (tmp_path / "fake_pip.py").write_text(FAKE_PIP)
    return tmp_path / "home"


def install(home: Path, packages: list[str], *, keep: int = 3, **env: str) -> subprocess.CompletedProcess:
    key = env_key("img:1", packages, None, [])
    pip = [sys.executable, str(home.parent / "fake_pip.py"), "install", "--", *packages]
    argv = installer_argv(sys.executable, str(home / package_envs.ENVS_DIR), key, keep, pip)
    environment = {**os.environ, "FAKE_PIP_RUNS": str(home.parent / "runs.txt"), **env}
    return subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=120)


def runs(home: Path) -> int:
    path = home.parent / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def envs(home: Path) -> list[str]:
    folder = home / package_envs.ENVS_DIR
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_the_key_is_what_decides_pips_result():
    assert env_key("img:1", ["b", "a"], None, []) == env_key("img:1", ["a", "b"], None, [])
    assert env_key("img:1", ["a"], None, []) != env_key("img:2", ["a"], None, [])
    assert env_key("img:1", ["a"], None, []) != env_key("img:1", ["a"], "https://pi", [])
    assert env_key("img:1", ["a"], None, []) != env_key("img:1", ["a==1"], None, [])


def test_built_once_then_reused_without_pip(home):
    first = install(home, ["tqdm"])
    assert first.returncode == 0, first.stderr
    key = env_key("img:1", ["tqdm"], None, [])
    assert (home / package_envs.ENVS_DIR / key / "tqdm" / "__init__.py").read_text() == "VALUE = 42\n"
    second = install(home, ["tqdm"])
    assert second.returncode == 0 and second.stdout.startswith(package_envs.REUSED)
    assert runs(home) == 1  # no pip the second time
    install(home, ["tqdm", "rich"])  # a changed set builds a new one
    assert runs(home) == 2 and len(envs(home)) == 2


def test_a_failed_build_is_never_used_and_leaves_nothing(home):
    failed = install(home, ["tqdm"], FAKE_PIP_FAIL="1")
    assert failed.returncode == 1
    assert envs(home) == []  # no half-built folder, none published
    assert install(home, ["tqdm"]).returncode == 0 and runs(home) == 2  # built afresh


def test_a_build_killed_half_way_is_never_used(home):
    process = subprocess.Popen(
        installer_argv(sys.executable, str(home / package_envs.ENVS_DIR), env_key("img:1", ["tqdm"], None, []), 3,
                       [sys.executable, str(home.parent / "fake_pip.py"), "install", "--", "tqdm"]),
        env={**os.environ, "FAKE_PIP_RUNS": str(home.parent / "runs.txt"), "FAKE_PIP_DELAY": "0.2"},
        start_new_session=True)
    while not envs(home):
        pass
    os.killpg(process.pid, 9)  # the pod is killed mid-install: no cleanup runs
    process.wait()
    assert all(name.startswith(".building-") for name in envs(home))
    result = install(home, ["tqdm"])
    assert result.returncode == 0 and not result.stdout.startswith(package_envs.REUSED)  # not taken as built


def test_two_builds_at_once_never_corrupt_the_environment(home):
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda: results.append(install(home, ["tqdm"], FAKE_PIP_DELAY="0.01")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    key = env_key("img:1", ["tqdm"], None, [])
    package = home / package_envs.ENVS_DIR / key / "tqdm"
    record = (package / "RECORD").read_text().splitlines()
    # exactly one build's files: not a mix of both builds
    assert sorted(p.name for p in package.iterdir()) == sorted([*record, "RECORD", "__init__.py"])
    assert envs(home) == [key]  # the spare copy is gone


def test_old_environments_beyond_the_last_few_are_removed(home):
    for packages in (["a"], ["b"], ["c"], ["d"]):
        assert install(home, packages, keep=2).returncode == 0
    kept = envs(home)
    assert kept == sorted([env_key("img:1", ["c"], None, []), env_key("img:1", ["d"], None, [])])


def test_a_watched_build_is_tagged_and_one_over_its_limit_is_never_published(home):
    """The local backend's options: its tag names the building folder (so the hub measures its
    own build), and a build larger than DCLOUD_MAX_BYTES after pip is removed, not published."""
    too_big = install(home, ["tqdm"], DCLOUD_BUILD_TAG="watched", DCLOUD_MAX_BYTES="10")
    assert too_big.returncode == package_envs.TOO_BIG
    key = env_key("img:1", ["tqdm"], None, [])
    [target] = (home.parent / "runs.txt").read_text().splitlines()
    assert os.path.basename(target).startswith(f".building-{key}-watched")
    assert envs(home) == []
    assert install(home, ["tqdm"], DCLOUD_MAX_BYTES=str(1024**2)).returncode == 0 and envs(home) == [key]
