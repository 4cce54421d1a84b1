"""The package environment installer (core/package_envs.py), run for real with a stand-in pip:
built once, reused without pip, never used half-built, never corrupted by two builds at once."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
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
    """The environments and builds in the folder (not the installers' markers and lock)."""
    folder = home / package_envs.ENVS_DIR
    names = sorted(os.listdir(folder)) if folder.exists() else []
    return [name for name in names if name not in (package_envs.IN_USE, package_envs.LOCK)]


def key_of(*packages: str) -> str:
    return env_key("img:1", list(packages), None, [])


def start(home: Path, server: str, token: str, packages: list[str], ended: tuple[str, ...] = (),
          keep: int = 3) -> subprocess.CompletedProcess:
    """An install as a start of ``server`` runs it: marking its environment under ``token``."""
    result = install(home, packages, keep=keep, **package_envs.marker_env(server, token, ended))
    assert result.returncode == 0, result.stderr
    return result


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


def test_an_environment_a_running_server_marks_is_never_pruned(home):
    """Four servers of one user share the folder, each on its own set, with keep=3: the 4th
    install prunes none of them (the oldest was taken from under a running server). Once servers
    have stopped (the hub lists their tokens as over), the next install prunes their sets past
    the newest 3, and the stopped servers' markers go."""
    for server, package in (("one", "a"), ("two", "b"), ("three", "c"), ("four", "d")):
        start(home, server, f"t{server}", [package])
    assert envs(home) == sorted(key_of(p) for p in "abcd")
    # "one" and "four" stopped; "two" starts again with another set; an earlier start's token of
    # "three" (over long ago) does not end its current start's marker
    start(home, "two", "ttwo2", ["e"], ended=("tone", "tfour", "tthree-old"))
    assert envs(home) == sorted(key_of(p) for p in "cde")  # b: no server's now; a: past the newest 3
    marks = home / package_envs.ENVS_DIR / package_envs.IN_USE
    assert sorted(os.listdir(marks)) == ["server-three", "server-two"]
    assert (marks / "server-two").read_text() == f"ttwo2 {key_of('e')}"


def test_a_start_after_the_hubs_list_keeps_its_environment(home):
    """The hub lists the tokens of starts that are over; a start that began after the list was made
    (its pod waited in line for minutes) has a token nobody listed, so its environment stays."""
    start(home, "one", "old1", ["a"])  # an earlier start of "one", over
    start(home, "one", "new1", ["a"])  # its next start, begun after the other server's hub list
    start(home, "two", "t2", ["b"], ended=("old1",), keep=1)
    assert envs(home) == sorted([key_of("a"), key_of("b")])


def test_marking_and_looking_wait_for_a_prune_under_way(home):
    """A start marks its environment and looks for it under the folder's lock, which a prune holds
    while it chooses what to remove: no prune takes an environment between the two."""
    start(home, "one", "t1", ["a"])
    folder = home / package_envs.ENVS_DIR
    with open(folder / package_envs.LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a prune of another start would
        env = {**os.environ, "FAKE_PIP_RUNS": str(home.parent / "runs.txt"),
               **package_envs.marker_env("two", "t2", ())}
        pip = [sys.executable, str(home.parent / "fake_pip.py"), "install", "--", "a"]
        waiting = subprocess.Popen(installer_argv(sys.executable, str(folder), key_of("a"), 3, pip), env=env)
        time.sleep(1)
        assert waiting.poll() is None and not (folder / package_envs.IN_USE / "server-two").exists()
    assert waiting.wait(60) == 0
    assert (folder / package_envs.IN_USE / "server-two").read_text() == f"t2 {key_of('a')}"
    assert runs(home) == 1  # it reused the environment


def test_the_installer_reports_through_an_inherited_descriptor(home):
    """The local hub's way: a pipe's end the installer inherits (it may run as another user,
    who could not open the hub's pipe by path)."""
    for expected in ("built", "reused"):
        read, write = os.pipe()
        key = key_of("tqdm")
        pip = [sys.executable, str(home.parent / "fake_pip.py"), "install", "--", "tqdm"]
        env = {**os.environ, "FAKE_PIP_RUNS": str(home.parent / "runs.txt"), "DCLOUD_INSTALL_REPORT_FD": str(write)}
        subprocess.run(installer_argv(sys.executable, str(home / package_envs.ENVS_DIR), key, 3, pip), env=env,
                       pass_fds=(write,), check=True, timeout=60)
        os.close(write)
        assert os.read(read, 100).decode() == f"{expected} {key}"
        os.close(read)
