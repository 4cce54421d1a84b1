"""Users' packages on the local backend: one environment per set of packages in the user's
directory, built by the shared installer as the server's own user, bounded, reused without pip.

A stand-in "python" runs the real interpreter for the installer and the version probe, and
stands in for ``python -m pip``: it records each run (environment, working directory, user)
and then behaves as the test needs: installs a package, hangs, or grows past the size limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from traitlets.config import Config

from dcloud_spawner.core import package_envs
from dcloud_spawner.hub.mixin import SpawnRefused
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.local import DCloudLocalSpawner, limits
from dcloud_spawner.local.paths import entries_size, is_file_at, remove_entries
from tests.conftest import EXAMPLE_CATALOG
from tests.support.hub import DemoHub, free_port, launch_hub, stop_demo_hub
from tests.support.package_index import serve_index

FAKE_PYTHON = """#!{python}
import json, os, subprocess, sys, tempfile, time
argv = sys.argv[1:]
if argv[:2] != ["-m", "pip"]:  # the installer and the version probe: the real interpreter
    if os.path.exists({mode!r} + ".warn"):  # as an interpreter that warns on stderr as it starts
        sys.stderr.write("Could not find platform dependent libraries <exec_prefix>\\n")
        sys.stderr.flush()
    os.execv({python!r}, [{python!r}, *argv])
target = os.environ["PIP_TARGET"]
with open({report!r}, "a") as f:
    f.write(json.dumps({{"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(), "argv": argv}}) + "\\n")
mode = open({mode!r}).read().strip()
if mode in ("install", "slow-install"):
    name = argv[argv.index("--") + 1].replace("-", "_")
    os.makedirs(os.path.join(target, name))
    files = [f"part{{i}}_{{os.getpid()}}.py" for i in range(20)]  # this build's own names, like pip's RECORD
    for file in files:
        open(os.path.join(target, name, file), "w").close()
        if mode == "slow-install":
            time.sleep(0.05)
    with open(os.path.join(target, name, "RECORD"), "w") as f:
        f.write("\\n".join(files))
    with open(os.path.join(target, name, "__init__.py"), "w") as f:
        f.write("VERSION = 1\\n")
elif mode in ("hang", "slow-big"):
    child = subprocess.Popen(["sleep", "300"])  # pip's own children must go too
    with open({report!r} + ".pids", "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    if mode == "slow-big":  # pip's temporary files grow past the limit while the hub measures
        for i in range(30):
            with open(os.path.join(tempfile.gettempdir(), f"part-{{i}}.bin"), "wb") as f:
                f.write(b"x" * (128 * 1024))
            time.sleep(0.1)
    time.sleep(300)
elif mode == "big":  # past the limit at once, done before the hub looks: the installer's own check
    with open(os.path.join(target, "huge.bin"), "wb") as f:
        f.write(b"x" * (3 * 1024 * 1024))
"""

ENVS = Path(package_envs.ENVS_DIR)


@pytest.fixture(autouse=True)
def no_stray_processes(tmp_path):
    yield
    for pids in tmp_path.glob("**/*.pids"):  # where a test failed, its processes still go
        for pid in pids.read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


def local_spawner(tmp_path: Path, catalog: Path = EXAMPLE_CATALOG, name: str = "",
                  user: OfflineUser | None = None) -> DCloudLocalSpawner:
    """guest's local spawner (server ``name``) with its working directory made, under ``tmp_path``."""
    cfg = Config()
    cfg.DCloudLocalSpawner.catalog_path = str(catalog)
    cfg.DCloudLocalSpawner.server_root = str(tmp_path / "servers")
    made = DCloudLocalSpawner(user=user or OfflineUser("guest", []), hub=offline_hub(), config=cfg)
    if name:  # a named server: JupyterHub keeps its name in its database row
        made.orm_spawner = SimpleNamespace(name=name, display_name=name, server=None, state={})
    made.workdir.mkdir(parents=True)
    return made


def edited_catalog(tmp_path: Path, index_url: str | None = None, keep: int | None = None) -> Path:
    """The example catalog with ``packages.index_url`` and ``storage.package_environments`` set."""
    text = EXAMPLE_CATALOG.read_text()
    if index_url:
        text = text.replace("packages:\n  enabled: true\n", f"packages:\n  enabled: true\n  index_url: {index_url}\n")
    if keep:
        text += f"\nstorage:\n  package_environments: {keep}\n"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(text)
    return catalog


def users_servers(tmp_path: Path, names: list[str], catalog: Path = EXAMPLE_CATALOG) -> list[DCloudLocalSpawner]:
    """Named servers of one user, each seeing the others as JupyterHub's User lists them."""
    user = OfflineUser("guest", [])
    servers = [local_spawner(tmp_path, catalog, name, user) for name in names]
    user.all_spawners = lambda: iter(servers)  # type: ignore[attr-defined]
    return servers


def running(spawner: DCloudLocalSpawner, up: bool = True) -> None:
    """The server runs (``up``) or has stopped, as JupyterHub records it."""
    spawner.orm_spawner.server = (
        orm.Server(ip="127.0.0.1", port=1, proto="http", base_url="/", cookie_name="c") if up else None
    )


def catalog_with_index(tmp_path: Path, index_url: str) -> Path:
    return edited_catalog(tmp_path, index_url=index_url)


@pytest.fixture
def spawner(tmp_path):
    reset_hub_state()
    yield local_spawner(tmp_path)
    reset_hub_state()


@dataclass
class FakePython:
    path: str
    report: Path
    mode_file: Path

    def mode(self, mode: str) -> None:
        self.mode_file.write_text(mode)

    def runs(self) -> list[dict]:
        """One record per run of ``python -m pip``."""
        return [json.loads(line) for line in self.report.read_text().splitlines()] if self.report.exists() else []


def fake_python(tmp_path: Path, mode: str = "install", name: str = "python") -> FakePython:
    script, report, mode_file = tmp_path / name, tmp_path / f"{name}-report.jsonl", tmp_path / f"{name}-mode"
    script.write_text(
        FAKE_PYTHON.format(python=os.path.realpath(sys.executable), report=str(report), mode=str(mode_file))
    )
    script.chmod(0o755)
    made = FakePython(str(script), report, mode_file)
    made.mode(mode)
    return made


def install(spawner, python: str, packages: tuple[str, ...] = ("dcloud-probe",), timeout: float = 30) -> Path:
    plan = spawner.validate_options({"environment": "scipy", "packages": list(packages)})
    return asyncio.run(asyncio.wait_for(spawner._install_packages(plan, python), timeout))


def envs(spawner) -> list[str]:
    """The entries of the user's package environments folder (published ones and builds), not
    the installers' markers and lock."""
    return entries(spawner.user_dir / ENVS)


def entries(folder: Path) -> list[str]:
    names = sorted(os.listdir(folder)) if folder.exists() else []
    return [name for name in names if name not in (package_envs.IN_USE, package_envs.LOCK)]


def published(spawner) -> list[str]:
    return [name for name in envs(spawner) if (spawner.user_dir / ENVS / name / package_envs.COMPLETE).is_file()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat  # a zombie is dead, waiting for its parent


def test_pip_gets_a_minimal_environment_and_builds_in_the_users_directory(spawner, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret-token")
    monkeypatch.setenv("CONFIGPROXY_AUTH_TOKEN", "proxy-secret-token")
    monkeypatch.setenv("JPY_COOKIE_SECRET", "cookie-secret")
    python = fake_python(tmp_path)
    made = install(spawner, python.path)
    user_dir = tmp_path / "servers" / "guest"  # shared by the user's servers
    assert made.parent == user_dir / ENVS and published(spawner) == [made.name]
    assert (made / "dcloud_probe" / "__init__.py").exists()
    assert not (made / ".tmp").exists()  # pip's temporary folder does not stay behind
    [seen] = python.runs()
    env = seen["env"]
    assert not {"JUPYTERHUB_API_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "JPY_COOKIE_SECRET"} & set(env)
    assert "secret" not in json.dumps(env)
    installer = {
        "PIP_TARGET",
        "PIP_CACHE_DIR",
        "PIP_NO_WARN_SCRIPT_LOCATION",
        "DCLOUD_BUILD_TAG",
        "DCLOUD_BUILD_TMP",
        "DCLOUD_MAX_BYTES",
        "DCLOUD_DIE_WITH_PARENT",
        "DCLOUD_INSTALL_REPORT_FD",
        "DCLOUD_SERVER",
        "DCLOUD_START",
        "DCLOUD_ENDED",
    }
    assert set(env) <= set(spawner.package_env_keep) | installer | {
        "HOME",
        "USER",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "LANG",
        "PATH",
        "PWD",
        "SHLVL",
        "_",
        "LC_CTYPE",
    }
    assert env["HOME"] == str(spawner.workdir) and env["USER"] == "guest"
    building = Path(env["PIP_TARGET"])
    assert building.parent == user_dir / ENVS and building.name.startswith(f".building-{made.name}-")
    assert env["TMPDIR"] == str(building / ".tmp")  # measured with the build
    assert env["PIP_CACHE_DIR"] == str(user_dir / package_envs.PIP_CACHE_DIR)
    assert "--target" not in seen["argv"] and "--no-cache-dir" not in seen["argv"]
    assert seen["cwd"] == str(spawner.workdir)
    assert seen["uid"] == os.getuid()  # the server's uid (the hub's, when not run_as_system_users)


def test_a_second_start_with_the_same_set_runs_no_pip_and_says_so(spawner, tmp_path):
    python = fake_python(tmp_path)
    first = install(spawner, python.path)
    assert spawner._progress == [
        "Installing extra packages: dcloud-probe",
        "Built your packages into your directory: dcloud-probe; the next start with them reuses them",
    ]
    spawner._progress = []
    python.mode("hang")  # were pip to run again, the install would hang until stopped
    assert install(spawner, python.path) == first
    assert len(python.runs()) == 1
    assert spawner._progress == ["Reusing your packages: dcloud-probe (built at an earlier start; pip did not run)"]


def test_a_changed_set_or_interpreter_builds_a_new_environment(spawner, tmp_path):
    python = fake_python(tmp_path)
    first = install(spawner, python.path)
    second = install(spawner, python.path, ("dcloud-probe", "rich"))
    assert second != first and len(python.runs()) == 2
    assert (second / "dcloud_probe").is_dir()
    other = fake_python(tmp_path, name="python-other")  # another interpreter: its own builds
    third = install(spawner, other.path)
    assert third not in (first, second) and len(other.runs()) == 1
    assert published(spawner) == sorted(p.name for p in (first, second, third))


def test_environments_beyond_the_catalogs_keep_setting_are_removed(tmp_path):
    reset_hub_state()
    spawner = local_spawner(tmp_path, edited_catalog(tmp_path, keep=2))
    python = fake_python(tmp_path)
    made = [install(spawner, python.path, (name,)) for name in ("a-pkg", "b-pkg", "c-pkg")]
    assert published(spawner) == sorted(p.name for p in made[1:])  # the oldest went
    install(spawner, python.path, ("b-pkg",))  # reused: now the most recently used
    newest = install(spawner, python.path, ("d-pkg",))
    assert published(spawner) == sorted([made[1].name, newest.name])
    assert len(python.runs()) == 4
    reset_hub_state()


def test_two_servers_of_one_user_starting_at_once_share_one_environment(tmp_path):
    """Named servers of one user build the same set at once: both get it complete, one build's
    files only (never a mix of both), and one published folder."""
    reset_hub_state()
    one, two = local_spawner(tmp_path, name="one"), local_spawner(tmp_path, name="two")
    python = fake_python(tmp_path, "slow-install")
    plan = one.validate_options({"environment": "scipy", "packages": ["dcloud-probe"]})

    async def both() -> list[Path]:
        return list(
            await asyncio.gather(one._install_packages(plan, python.path), two._install_packages(plan, python.path))
        )

    made = asyncio.run(asyncio.wait_for(both(), 60))
    assert made[0] == made[1] and envs(one) == [made[0].name]  # no spare build left either
    assert len(python.runs()) == 2  # they overlapped: both built
    package = made[0] / "dcloud_probe"
    record = (package / "RECORD").read_text().splitlines()
    assert sorted(p.name for p in package.iterdir()) == sorted([*record, "RECORD", "__init__.py"])
    reset_hub_state()


def test_a_running_servers_environment_is_never_pruned_by_another_servers_start(tmp_path):
    """Four named servers of one user run at once, each on its own set, with the catalog's default
    keep of 3: the fourth start leaves the first server's environment (it was pruned from under the
    running server). Once servers have stopped, a later start prunes their sets past the newest 3."""
    reset_hub_state()
    servers = users_servers(tmp_path, ["one", "two", "three", "four"])
    python = fake_python(tmp_path)
    made = {}
    for spawner, package in zip(servers, ("a-pkg", "b-pkg", "c-pkg", "d-pkg"), strict=True):
        made[spawner.name] = install(spawner, python.path, (package,))
        running(spawner)
    assert published(servers[0]) == sorted(path.name for path in made.values())
    assert (made["one"] / "a_pkg" / "__init__.py").is_file()
    running(servers[0], up=False)
    running(servers[3], up=False)
    again = install(servers[1], python.path, ("e-pkg",))  # "two" runs on another set now
    # a: "one" stopped, past the newest 3; b: no server's now; c and e in use; d: among the newest
    assert published(servers[0]) == sorted([made["three"].name, made["four"].name, again.name])
    assert sorted(os.listdir(servers[0].user_dir / ENVS / package_envs.IN_USE)) == ["server-three", "server-two"]
    reset_hub_state()


def test_the_hub_lists_as_over_only_starts_that_are_over(tmp_path):
    """What a start tells the installer of the user's other servers: the tokens of starts that are
    over (stopped; running without packages now; a stopped server's database row the hub made no
    spawner for), never a running or starting server's, whose environment stays."""
    reset_hub_state()
    me, up, stopped, bare = users_servers(tmp_path, ["me", "up", "stopped", "bare"])
    for spawner in (up, stopped, bare):
        spawner.mark_package_env(True)
        running(spawner)
    running(stopped, up=False)
    bare.mark_package_env(False)  # restarted without packages
    starting = local_spawner(tmp_path, name="starting", user=me.user)
    starting.mark_package_env(True)
    starting._spawn_pending = True
    # JupyterHub's rows of servers it holds no spawner for (it drops it at a stop)
    row = orm.Spawner(name="row", state={"dcloud_env_token": "f00d", "dcloud_env_held": True})
    live_row = orm.Spawner(name="live-row", state={"dcloud_env_token": "beef"})
    live_row.server = orm.Server(ip="127.0.0.1", port=1, proto="http", base_url="/", cookie_name="c")
    me.user.all_spawners = lambda: iter([me, up, stopped, bare, starting, row, live_row])
    marks = me.mark_package_env(True)
    assert sorted(marks["DCLOUD_ENDED"].split()) == sorted([stopped.dcloud_env_token, bare.dcloud_env_token, "f00d"])
    assert marks["DCLOUD_SERVER"] == "server-me" and marks["DCLOUD_START"] == me.dcloud_env_token
    assert me.mark_package_env(True)["DCLOUD_START"] != marks["DCLOUD_START"]  # never the same twice
    # the token survives JupyterHub's clear_state after a stop, and a hub restart
    stopped.clear_state()
    reloaded = local_spawner(tmp_path, name="stopped-again")
    reloaded.load_state(stopped.get_state())
    assert (reloaded.dcloud_env_token, reloaded.dcloud_env_held) == (stopped.dcloud_env_token, True)
    reset_hub_state()


def test_a_deleted_servers_marker_goes_with_it(tmp_path):
    """No later start of a deleted server's name replaces its marker: the hub drops it."""
    reset_hub_state()
    one, two = users_servers(tmp_path, ["one", "two"])
    python = fake_python(tmp_path)
    install(one, python.path)
    install(two, python.path, ("b-pkg",))
    asyncio.run(one.delete_forever())
    assert os.listdir(one.user_dir / ENVS / package_envs.IN_USE) == ["server-two"]
    reset_hub_state()


def test_a_reuse_is_told_so_when_the_interpreter_warns_first(spawner, tmp_path):
    """An interpreter that prints a warning on stderr as it starts: the outcome comes from the
    installer's report, not from the first bytes of its output."""
    python = fake_python(tmp_path)
    Path(f"{python.mode_file}.warn").touch()
    first = install(spawner, python.path)
    spawner._progress = []
    assert install(spawner, python.path) == first
    assert spawner._progress == ["Reusing your packages: dcloud-probe (built at an earlier start; pip did not run)"]


def test_a_hanging_pip_is_killed_with_its_children_after_the_timeout(spawner, tmp_path):
    spawner.package_install_timeout = 1.5
    python = fake_python(tmp_path, "hang")
    started = time.monotonic()
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python.path)
    assert time.monotonic() - started < 15
    sentence = str(err.value.jupyterhub_message)
    assert sentence == (
        "Installing the extra packages took longer than 1.5 seconds and was stopped; ask for fewer or smaller packages."
    )
    pids = [int(p) for p in Path(str(python.report) + ".pids").read_text().split()]
    time.sleep(0.3)
    assert not any(alive(pid) for pid in pids)
    assert envs(spawner) == []  # its half-built folder went with it


def test_a_cancelled_spawn_kills_pip_and_its_half_built_environment_is_never_used(spawner, tmp_path):
    python = fake_python(tmp_path, "hang")
    plan = spawner.validate_options({"environment": "scipy", "packages": ["dcloud-probe"]})
    pids_file = Path(str(python.report) + ".pids")

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(spawner._install_packages(plan, python.path))
        for _ in range(100):
            if pids_file.exists():
                break
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    pids = [int(p) for p in pids_file.read_text().split()]
    time.sleep(0.3)
    assert not any(alive(pid) for pid in pids)
    assert envs(spawner) == []
    python.mode("install")
    spawner._progress = []
    made = install(spawner, python.path)  # built afresh, not taken as built
    assert len(python.runs()) == 2 and (made / "dcloud_probe").is_dir()
    assert spawner._progress[0] == "Installing extra packages: dcloud-probe"


def test_an_installer_killed_from_outside_leaves_nothing_usable(spawner, tmp_path):
    """The installer and pip killed mid-build by something else than the hub (the OOM killer, an
    admin): the spawn is refused, and the next start builds the set again."""
    python = fake_python(tmp_path, "hang")
    pids_file = Path(str(python.report) + ".pids")

    def kill_when_pip_runs() -> None:
        while not pids_file.exists():
            time.sleep(0.05)
        os.killpg(os.getpgid(int(pids_file.read_text().split()[0])), signal.SIGKILL)

    plan = spawner.validate_options({"environment": "scipy", "packages": ["dcloud-probe"]})

    async def killed() -> None:
        await asyncio.gather(asyncio.to_thread(kill_when_pip_runs), spawner._install_packages(plan, python.path))

    with pytest.raises(SpawnRefused) as err:
        asyncio.run(asyncio.wait_for(killed(), 30))
    assert str(err.value.jupyterhub_message).startswith("Installing the extra packages failed")
    assert published(spawner) == []
    python.mode("install")
    install(spawner, python.path)
    assert len(python.runs()) == 2


def test_a_build_over_the_size_limit_is_refused_and_never_published(spawner, tmp_path):
    """Over the limit between two of the hub's looks: the installer's own check before it
    publishes refuses it."""
    spawner.package_overlay_max_bytes = 1024 * 1024
    python = fake_python(tmp_path, "big")
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python.path)
    assert str(err.value.jupyterhub_message) == (
        "The extra packages need more than the 1 MiB this server may use for them; ask for fewer or smaller packages."
    )
    assert envs(spawner) == []
    spawner.package_overlay_max_bytes = 4 * 1024 * 1024  # the same set fits a larger limit
    spawner._progress = []
    install(spawner, python.path)
    assert len(python.runs()) == 2 and spawner._progress[-1].startswith("Built your packages")


def test_measurement_and_removal_never_follow_links(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "file").write_bytes(b"x" * 50000)
    (outside / package_envs.COMPLETE).write_text("")
    base = tmp_path / "work"
    folder = ENVS.parts
    build = base / ENVS / ".building-k-t1"
    (build / "sub").mkdir(parents=True)
    (build / "sub" / "escape").symlink_to(outside, target_is_directory=True)
    (build / "own").write_bytes(b"y" * 100)
    (base / ENVS / ".building-k-t2").symlink_to(outside, target_is_directory=True)
    (base / ENVS / "other").mkdir()
    assert 100 < entries_size(base, folder, ".building-k-") < 50000  # the links' own sizes, not their targets'
    assert not is_file_at(base, *folder, ".building-k-t2", package_envs.COMPLETE)
    assert remove_entries(base, folder, ".building-k-")
    assert os.listdir(base / ENVS) == ["other"]
    assert (outside / "deep" / "file").exists()
    shutil.rmtree(base / ".dcloud")
    (base / ".dcloud").symlink_to(outside, target_is_directory=True)  # a link above the folder
    (outside / "envs" / ".building-k-t3").mkdir(parents=True)
    (outside / "envs" / ".building-k-t3" / "big").write_bytes(b"z" * 50000)
    assert entries_size(base, folder, ".building-k-") == 0
    assert not remove_entries(base, folder, ".building-k-")
    assert (outside / "envs" / ".building-k-t3" / "big").exists()


def spawner_with_index(tmp_path, index_url: str) -> DCloudLocalSpawner:
    return local_spawner(tmp_path, catalog_with_index(tmp_path, index_url))


def test_real_pip_builds_from_the_catalogs_index_once(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret-token")
    reset_hub_state()
    with serve_index(tmp_path / "index", "127.0.0.1") as index:
        spawner = spawner_with_index(tmp_path, index.url)
        made = install(spawner, sys.executable, timeout=120)
        asked = len(index.requests)
        assert asked > 0
        again = install(spawner, sys.executable, timeout=120)
        assert len(index.requests) == asked  # no pip the second time: the index saw nothing
    assert again == made and spawner._progress[-1].startswith("Reusing your packages: dcloud-probe")
    imported = subprocess.run(
        [sys.executable, "-c", "import dcloud_probe; print(dcloud_probe.__file__)"],
        env={**os.environ, "PYTHONPATH": str(made)},
        capture_output=True,
        text=True,
    )
    assert imported.stdout.strip() == str(made / "dcloud_probe" / "__init__.py"), imported.stderr
    assert not (made / ".tmp").exists()
    reset_hub_state()


def test_real_pip_against_an_index_that_never_answers_is_stopped(tmp_path):
    """A package index that accepts connections and never answers: pip hangs until killed."""
    reset_hub_state()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        spawner = spawner_with_index(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}/simple/")
        spawner.package_install_timeout = 2
        started = time.monotonic()
        with pytest.raises(SpawnRefused) as err:
            install(spawner, sys.executable, timeout=60)
    assert time.monotonic() - started < 20
    assert "took longer than 2 seconds and was stopped" in str(err.value.jupyterhub_message)
    assert envs(spawner) == []
    reset_hub_state()


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="running as another account needs root"
)
def test_as_system_users_pip_runs_as_the_users_account(tmp_path, monkeypatch):
    """With run_as_system_users, pip has the server user's uid and gid, never the hub's root,
    and the environment is the user's own, in its home."""
    account = pwd.getpwnam("nobody")
    place = Path(tempfile.mkdtemp(prefix="dcloud-home-"))  # pytest's tmp_path is root's alone
    try:
        place.chmod(0o755)
        home = place / "home"
        home.mkdir()
        os.chown(home, account.pw_uid, account.pw_gid)
        report, mode = place / "report.jsonl", place / "mode"
        mode.write_text("install")
        report.touch()
        os.chown(report, account.pw_uid, account.pw_gid)
        script = place / "python-as-user"
        script.write_text(FAKE_PYTHON.format(python="/usr/bin/python3", report=str(report), mode=str(mode)))
        script.chmod(0o755)
        reset_hub_state()
        cfg = Config()
        cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
        cfg.DCloudLocalSpawner.run_as_system_users = True
        spawner = DCloudLocalSpawner(user=OfflineUser("nobody", []), hub=offline_hub(), config=cfg)
        monkeypatch.setattr(DCloudLocalSpawner, "workdir", property(lambda self: home))
        monkeypatch.setattr(DCloudLocalSpawner, "user_dir", property(lambda self: home))
        made = install(spawner, str(script))
        [seen] = [json.loads(line) for line in report.read_text().splitlines()]
        assert seen["uid"] == account.pw_uid and seen["cwd"] == str(home)
        assert made.parent == home / ENVS
        assert os.stat(made).st_uid == account.pw_uid  # the user's own files, not root's
        assert os.stat(home / ".dcloud").st_uid == account.pw_uid
        assert seen["env"]["HOME"] == str(home) and seen["env"]["USER"] == "nobody"
        assert spawner._progress[-1].startswith("Built your packages into your home: dcloud-probe")
    finally:
        shutil.rmtree(place)
        reset_hub_state()


def test_a_folder_left_by_the_former_per_server_overlay_is_the_users_and_stays(spawner, tmp_path):
    """Older DCloud versions installed into ``.dcloud-packages`` in the working directory; that
    folder is now the user's own: never used, never removed."""
    old = spawner.workdir / ".dcloud-packages"
    (old / "mine").mkdir(parents=True)
    (old / "mine" / "notes.txt").write_text("mine")
    made = install(spawner, fake_python(tmp_path).path)
    assert (old / "mine" / "notes.txt").read_text() == "mine"
    assert ".dcloud-packages" not in str(made)


def pip_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def demo_hub_launcher(state: Path, catalog: Path) -> Callable[[], DemoHub]:
    """Launches (and, called again, relaunches) a demo hub on ``catalog`` keeping its state in
    ``state``, with one API token, password and port throughout."""
    token, password, port = secrets.token_hex(16), secrets.token_hex(8), free_port()
    env = {**os.environ, "DCLOUD_DEMO_DIR": str(state), "DCLOUD_DEMO_API_TOKEN": token}
    argv = [sys.executable, "-m", "dcloud_spawner.cli", "demo", "--port", str(port), f"--password={password}",
            "--catalog", str(catalog)]
    return lambda: launch_hub(argv, state, env, token, password, port)


@dataclass
class HangingInstall:
    """A demo hub whose guest server ``p`` is waiting in pip on an index that never answers."""

    hub: DemoHub
    relaunch: Callable[[], DemoHub]
    envs: Path  # guest's package environments folder
    pids: list[int]


@contextmanager
def hanging_install(tmp_path: Path) -> Iterator[HangingInstall]:
    state = tmp_path / "demo"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple/"
        launch = demo_hub_launcher(state, catalog_with_index(tmp_path, index))
        install = HangingInstall(launch(), launch, state / "servers" / "guest" / ENVS, [])
        try:
            status, _ = install.hub.api(
                "POST",
                "/users/guest/servers/p",
                {"user_options": {"environment": "scipy", "packages": ["dcloud-probe"]}},
            )
            assert status in (201, 202)
            deadline = time.monotonic() + 30
            while not (found := pip_processes(index)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert found, install.hub.log_tail()
            install.pids.extend(found)
            yield install
        finally:
            stop_demo_hub(install.hub)
            for pid in install.pids:
                if alive(pid):
                    os.kill(pid, 9)


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(alive(pid) for pid in pids)


def test_stopping_a_spawn_through_the_hub_kills_a_hanging_pip(tmp_path):
    """Through a real hub: DELETE while pip waits on an index that never answers."""
    with hanging_install(tmp_path) as install:
        assert os.listdir(install.envs)  # the build under way
        install.hub.stop_server("guest", "p")
        assert wait_gone(install.pids)
        assert entries(install.envs) == []


def test_a_hub_killed_during_a_package_install_leaves_no_pip_and_no_half_started_server(tmp_path):
    """SIGKILL of the hub while pip waits on an index that never answers: the kernel ends the
    installer with the hub and pip with the installer (nobody else would), the half-built
    environment is never published, and the restarted hub shows the server as not started."""
    with hanging_install(tmp_path) as install:
        os.kill(install.hub.process.pid, signal.SIGKILL)  # a crash: the hub's own process only
        install.hub.process.wait()
        assert wait_gone(install.pids), "pip outlived the hub"
        assert all(name.startswith(".building-") for name in entries(install.envs))
        install.hub = hub = install.relaunch()
        _, model = hub.api("GET", "/users/guest")
        assert "p" not in model["servers"]  # not left half-way: it may simply be started again
        status, _ = hub.api("POST", "/users/guest/servers/p", {"user_options": {"environment": "scipy"}})
        assert status in (201, 202)
        hub.wait_ready("guest", "p")
        hub.stop_server("guest", "p")


def test_a_real_server_imports_its_packages_and_a_restart_reuses_them(tmp_path):
    """Through a real hub: the first start builds from the catalog's index and the running server
    has the package on its path; stopped and started again, pip does not run (the index sees no
    request) and the progress says so. With storage.package_environments 1, another server of the
    user's with another set leaves the running server's environment alone; once that server has
    stopped, the other's next start prunes it."""
    state = tmp_path / "demo"
    with serve_index(tmp_path / "index", "127.0.0.1") as index:
        hub = demo_hub_launcher(state, edited_catalog(tmp_path, index_url=index.url, keep=1))()
        try:
            options = {"user_options": {"environment": "scipy", "packages": ["dcloud-probe"]}}
            assert hub.api("POST", "/users/guest/servers/p", options)[0] in (201, 202)
            hub.wait_ready("guest", "p")
            server = hub.server_env("guest", "p")
            made = Path(server["PYTHONPATH"])
            assert made.parent == state / "servers" / "guest" / ENVS
            imported = subprocess.run(
                [sys.executable, "-c", "import dcloud_probe; print(dcloud_probe.VERSION)"],
                env=server,
                cwd=state / "servers" / "guest" / "p",
                capture_output=True,
                text=True,
            )
            assert imported.stdout.strip() == "1.0", imported.stderr
            asked = len(index.requests)
            assert asked > 0
            hub.stop_server("guest", "p")
            assert hub.api("POST", "/users/guest/servers/p", options)[0] in (201, 202)
            hub.wait_ready("guest", "p")
            assert hub.server_env("guest", "p")["PYTHONPATH"] == str(made)
            assert len(index.requests) == asked
            assert "Reusing your packages: dcloud-probe" in hub.log_tail(200)
            other = {"user_options": {"environment": "scipy", "packages": ["dcloud-probe==1.0"]}}
            assert hub.api("POST", "/users/guest/servers/q", other)[0] in (201, 202)
            hub.wait_ready("guest", "q")
            assert Path(hub.server_env("guest", "q")["PYTHONPATH"]) != made
            assert (made / "dcloud_probe" / "__init__.py").is_file()  # p runs on it: kept past keep=1
            hub.stop_server("guest", "p")
            hub.stop_server("guest", "q")
            assert hub.api("POST", "/users/guest/servers/q", other)[0] in (201, 202)
            hub.wait_ready("guest", "q")
            assert not made.exists()  # p's start is over: its environment went with q's prune
            hub.stop_server("guest", "q")
        finally:
            stop_demo_hub(hub)


def test_pip_runs_under_the_servers_cpu_and_memory_limits(spawner, tmp_path):
    """Where the limiter enforces limits (here a stand-in cgroup v2 tree), the installer and pip
    join a group with the server's own CPU and memory limits before they start."""
    groups = tmp_path / "cgroup"
    groups.mkdir()
    spawner.machine._limiter = limits.Limiter("cgroup2", "stand-in", groups)
    python = fake_python(tmp_path)
    plan = spawner.validate_options({"environment": "scipy", "cpu": 2, "memory": "3Gi", "packages": ["dcloud-probe"]})
    asyncio.run(spawner._install_packages(plan, python.path))
    group = groups / spawner.limiter.unit_name(f"{spawner.owner_key}/packages")
    assert (group / "cpu.max").read_text() == "200000 100000\n"
    assert (group / "memory.max").read_text() == f"{3 * 1024**3}\n"
    assert (group / "cgroup.procs").read_text() == "0\n"  # the installer's process joined it before exec


def test_a_datasets_folder_of_the_users_own_is_kept_and_the_views_go_beside_it(spawner, tmp_path):
    store = tmp_path / "store" / "coco"
    store.mkdir(parents=True)
    spawner.dataset_paths = {"coco": str(store)}
    mine = spawner.workdir / "datasets" / "notes"
    mine.mkdir(parents=True)
    (mine / "thesis.txt").write_text("mine")
    plan = spawner.validate_options({"environment": "scipy", "datasets": ["coco"]})
    try:
        env = asyncio.run(spawner._link_datasets(plan, spawner.workdir))
        assert env["DCLOUD_DATASETS_DIR"] == str(spawner.workdir / ".dcloud-datasets")
        (spawner.workdir / ".dcloud-datasets" / "more-of-mine").mkdir()  # now both names are taken
        with pytest.raises(SpawnRefused) as err:
            asyncio.run(spawner._link_datasets(plan, spawner.workdir))
        assert str(err.value.jupyterhub_message).startswith(
            "Your working directory already has datasets and .dcloud-datasets of your own"
        )
    finally:
        spawner.dataset_views().clear()
    assert (mine / "thesis.txt").read_text() == "mine"
    assert (spawner.workdir / ".dcloud-datasets" / "more-of-mine").is_dir()


def test_the_build_is_measured_removed_and_limited_off_the_event_loop(spawner, tmp_path, monkeypatch):
    """The build's walks (its size every half second while pip runs, its removal) and the
    limiter's cgroup writes run in worker threads: on the event loop they would hold every other
    user of the hub for as long as a walk of up to package_overlay_max_bytes takes. pip's
    temporary files count: here they alone pass the limit."""
    from dcloud_spawner.local import paths

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    calls: list[tuple[str, bool]] = []

    def recorded(name: str, function: Callable) -> Callable:
        def call(*args, **kwargs):
            calls.append((name, on_loop()))
            return function(*args, **kwargs)

        return call

    for name in ("entries_size", "remove_entries", "is_file_at"):
        monkeypatch.setattr(paths, name, recorded(name, getattr(paths, name)))
    groups = tmp_path / "cgroup"
    groups.mkdir()
    limiter = limits.Limiter("cgroup2", "stand-in", groups)
    for name in ("prepare", "kill", "cleanup"):
        monkeypatch.setattr(limiter, name, recorded(name, getattr(limiter, name)))
    spawner.machine._limiter = limiter
    spawner.package_overlay_max_bytes = 1024 * 1024
    python = fake_python(tmp_path, "slow-big")
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python.path)
    assert "more than the 1 MiB" in str(err.value.jupyterhub_message)  # refused while pip still ran
    assert envs(spawner) == []
    names = [name for name, _ in calls]
    assert names.count("entries_size") >= 2 and {"remove_entries", "is_file_at", "prepare", "kill", "cleanup"} <= set(
        names
    )
    assert [name for name, looped in calls if looped] == []
