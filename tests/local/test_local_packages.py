"""Users' packages on the local backend: installed by a process of the server's own, bounded.

A stand-in "python" records what pip would get (environment, working directory, user) and
then behaves as the test needs: installs a file, hangs, or fills the overlay.
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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from traitlets.config import Config

from dcloud_spawner.hub.mixin import SpawnRefused
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.local import DCloudLocalSpawner, limits
from dcloud_spawner.local.paths import OVERLAY, remove_entry, tree_size
from tests.conftest import EXAMPLE_CATALOG
from tests.support.hub import DemoHub, free_port, launch_hub, stop_demo_hub
from tests.support.package_index import serve_index

FAKE_PIP = """#!{python}
import json, os, subprocess, sys, time
argv = sys.argv[1:]
target = argv[argv.index("--target") + 1]
os.makedirs(target, exist_ok=True)
record = {{"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(), "argv": argv}}
with open({report!r}, "w") as f:
    json.dump(record, f)
mode = {mode!r}
if mode == "install":
    os.makedirs(os.path.join(target, "probe"), exist_ok=True)
    open(os.path.join(target, "probe", "__init__.py"), "w").write("VERSION = 1\\n")
elif mode == "hang":
    child = subprocess.Popen(["sleep", "300"])  # pip's own children must go too
    with open({report!r} + ".pids", "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(300)
elif mode == "big":
    with open(os.path.join(target, "huge.bin"), "wb") as f:
        f.write(b"x" * (3 * 1024 * 1024))
    time.sleep(0.2)
elif mode == "slow-big":  # grows past the limit while the hub measures it, as pip writes
    for i in range(30):
        with open(os.path.join(target, f"part-{{i}}.bin"), "wb") as f:
            f.write(b"x" * (128 * 1024))
        time.sleep(0.1)
    time.sleep(300)
"""


@pytest.fixture(autouse=True)
def no_stray_processes(tmp_path):
    yield
    for pids in tmp_path.glob("*.pids"):  # where a test failed, its processes still go
        for pid in pids.read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


def local_spawner(tmp_path: Path, catalog: Path = EXAMPLE_CATALOG) -> DCloudLocalSpawner:
    """guest's local spawner with its working directory made, under ``tmp_path``."""
    cfg = Config()
    cfg.DCloudLocalSpawner.catalog_path = str(catalog)
    cfg.DCloudLocalSpawner.server_root = str(tmp_path / "servers")
    made = DCloudLocalSpawner(user=OfflineUser("guest", []), hub=offline_hub(), config=cfg)
    made.workdir.mkdir(parents=True)
    return made


def catalog_with_index(tmp_path: Path, index_url: str) -> Path:
    """The example catalog with ``packages.index_url`` set."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(EXAMPLE_CATALOG.read_text().replace(
        "packages:\n  enabled: true\n", f"packages:\n  enabled: true\n  index_url: {index_url}\n"))
    return catalog


@pytest.fixture
def spawner(tmp_path):
    reset_hub_state()
    yield local_spawner(tmp_path)
    reset_hub_state()


def fake_python(tmp_path: Path, mode: str) -> tuple[str, Path]:
    report = tmp_path / f"report-{mode}.json"
    script = tmp_path / f"python-{mode}"
    script.write_text(FAKE_PIP.format(python=os.path.realpath(sys.executable), report=str(report),
                                      mode=mode))
    script.chmod(0o755)
    return str(script), report


def install(spawner, python: str, timeout: float = 30):
    plan = spawner.validate_options({"environment": "scipy", "packages": ["dcloud-probe"]})
    return asyncio.run(asyncio.wait_for(spawner._install_packages(plan, python, spawner.workdir), timeout))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat  # a zombie is dead, waiting for its parent


def test_pip_gets_a_minimal_environment_and_the_servers_workdir(spawner, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret-token")
    monkeypatch.setenv("CONFIGPROXY_AUTH_TOKEN", "proxy-secret-token")
    monkeypatch.setenv("JPY_COOKIE_SECRET", "cookie-secret")
    python, report = fake_python(tmp_path, "install")
    overlay = install(spawner, python)
    assert overlay == spawner.workdir / OVERLAY
    assert (overlay / "probe" / "__init__.py").exists()
    assert not (overlay / ".tmp").exists()  # pip's temporary folder does not stay behind
    seen = json.loads(report.read_text())
    env = seen["env"]
    assert not {"JUPYTERHUB_API_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "JPY_COOKIE_SECRET"} & set(env)
    assert "secret" not in json.dumps(env)
    assert set(env) <= set(spawner.package_env_keep) | {"HOME", "USER", "TMPDIR", "PYTHONDONTWRITEBYTECODE",
                                                        "LANG", "PATH", "PWD", "SHLVL", "_"}
    assert env["HOME"] == str(spawner.workdir) and env["USER"] == "guest"
    assert env["TMPDIR"] == str(overlay / ".tmp")  # measured with the overlay
    assert seen["cwd"] == str(spawner.workdir)
    assert seen["uid"] == os.getuid()  # the server's uid (the hub's, when not run_as_system_users)


def test_a_symlinked_overlay_is_replaced_never_followed(spawner, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (spawner.workdir / OVERLAY).symlink_to(outside, target_is_directory=True)
    python, _ = fake_python(tmp_path, "install")
    overlay = install(spawner, python)
    assert not overlay.is_symlink() and overlay.is_dir()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"


def test_a_hanging_pip_is_killed_with_its_children_after_the_timeout(spawner, tmp_path):
    spawner.package_install_timeout = 1.5
    python, report = fake_python(tmp_path, "hang")
    started = time.monotonic()
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python)
    assert time.monotonic() - started < 15
    sentence = str(err.value.jupyterhub_message)
    assert sentence == ("Installing the extra packages took longer than 1.5 seconds and was stopped; "
                        "ask for fewer or smaller packages.")
    pids = [int(p) for p in Path(str(report) + ".pids").read_text().split()]
    time.sleep(0.3)
    assert not any(alive(pid) for pid in pids)
    assert not (spawner.workdir / OVERLAY).exists()


def test_a_cancelled_spawn_kills_pip(spawner, tmp_path):
    python, report = fake_python(tmp_path, "hang")
    plan = spawner.validate_options({"environment": "scipy", "packages": ["dcloud-probe"]})
    pids_file = Path(str(report) + ".pids")

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(spawner._install_packages(plan, python, spawner.workdir))
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


def test_an_overlay_over_the_size_limit_is_refused_and_removed(spawner, tmp_path):
    spawner.package_overlay_max_bytes = 1024 * 1024
    python, _ = fake_python(tmp_path, "big")
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python)
    assert str(err.value.jupyterhub_message) == (
        "The extra packages need more than the 1 MiB this server may use for them; "
        "ask for fewer or smaller packages.")
    assert not os.path.lexists(spawner.workdir / OVERLAY)


def test_removal_and_measurement_never_follow_links(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "file").write_bytes(b"x" * 50000)
    base = tmp_path / "work"
    (base / OVERLAY / "sub").mkdir(parents=True)
    (base / OVERLAY / "sub" / "escape").symlink_to(outside, target_is_directory=True)
    (base / OVERLAY / "own").write_bytes(b"y" * 100)
    assert tree_size(base, OVERLAY) < 50000  # the link's own size, not its target's
    assert remove_entry(base, OVERLAY)
    assert not os.path.lexists(base / OVERLAY)
    assert (outside / "deep" / "file").exists()
    (base / OVERLAY).symlink_to(outside, target_is_directory=True)
    assert tree_size(base, OVERLAY) < 50000
    assert remove_entry(base, OVERLAY) and not os.path.lexists(base / OVERLAY)
    assert (outside / "deep" / "file").exists()


def spawner_with_index(tmp_path, index_url: str) -> DCloudLocalSpawner:
    return local_spawner(tmp_path, catalog_with_index(tmp_path, index_url))


def test_real_pip_installs_from_the_catalogs_index(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret-token")
    reset_hub_state()
    with serve_index(tmp_path / "index", "127.0.0.1") as index:
        spawner = spawner_with_index(tmp_path, index.url)
        overlay = install(spawner, sys.executable, timeout=120)
    assert (overlay / "dcloud_probe" / "__init__.py").exists()
    assert not (overlay / ".tmp").exists()
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
    assert not os.path.lexists(spawner.workdir / OVERLAY)
    reset_hub_state()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="running as another account needs root")
def test_as_system_users_pip_runs_as_the_users_account(tmp_path, monkeypatch):
    """With run_as_system_users, pip has the server user's uid and gid, never the hub's root."""
    account = pwd.getpwnam("nobody")
    place = Path(tempfile.mkdtemp(prefix="dcloud-home-"))  # pytest's tmp_path is root's alone
    try:
        place.chmod(0o755)
        home = place / "home"
        home.mkdir()
        os.chown(home, account.pw_uid, account.pw_gid)
        report = home / "report.json"
        script = place / "python-as-user"
        script.write_text(FAKE_PIP.format(python="/usr/bin/python3", report=str(report), mode="install"))
        script.chmod(0o755)
        reset_hub_state()
        cfg = Config()
        cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
        cfg.DCloudLocalSpawner.run_as_system_users = True
        spawner = DCloudLocalSpawner(user=OfflineUser("nobody", []), hub=offline_hub(), config=cfg)
        monkeypatch.setattr(DCloudLocalSpawner, "workdir", property(lambda self: home))
        overlay = install(spawner, str(script))
        seen = json.loads(report.read_text())
        assert seen["uid"] == account.pw_uid and seen["cwd"] == str(home)
        assert os.stat(overlay).st_uid == account.pw_uid  # the user's own files, not root's
        assert seen["env"]["HOME"] == str(home) and seen["env"]["USER"] == "nobody"
    finally:
        shutil.rmtree(place)
        reset_hub_state()


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


@dataclass
class HangingInstall:
    """A demo hub whose guest server ``p`` is waiting in pip on an index that never answers."""

    hub: DemoHub
    relaunch: Callable[[], DemoHub]
    overlay: str
    pids: list[int]


@contextmanager
def hanging_install(tmp_path: Path) -> Iterator[HangingInstall]:
    state = tmp_path / "demo"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        catalog = catalog_with_index(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}/simple/")
        token, password, port = secrets.token_hex(16), secrets.token_hex(8), free_port()
        env = {**os.environ, "DCLOUD_DEMO_DIR": str(state), "DCLOUD_DEMO_API_TOKEN": token}
        argv = [sys.executable, "-m", "dcloud_spawner.cli", "demo", "--port", str(port),
                f"--password={password}", "--catalog", str(catalog)]
        install = HangingInstall(launch_hub(argv, state, env, token, password, port),
                                 lambda: launch_hub(argv, state, env, token, password, port),
                                 str(state / "servers" / "guest" / "p" / OVERLAY), [])
        try:
            status, _ = install.hub.api("POST", "/users/guest/servers/p",
                                        {"user_options": {"environment": "scipy", "packages": ["dcloud-probe"]}})
            assert status in (201, 202)
            deadline = time.monotonic() + 30
            while not (found := pip_processes(install.overlay)) and time.monotonic() < deadline:
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
        install.hub.stop_server("guest", "p")
        assert wait_gone(install.pids)
        assert not os.path.lexists(install.overlay)


def test_a_hub_killed_during_a_package_install_leaves_no_pip_and_no_half_started_server(tmp_path):
    """SIGKILL of the hub while pip waits on an index that never answers: the kernel ends pip
    with the hub (nobody else would), and the restarted hub shows the server as not started."""
    with hanging_install(tmp_path) as install:
        os.kill(install.hub.process.pid, signal.SIGKILL)  # a crash: the hub's own process only
        install.hub.process.wait()
        assert wait_gone(install.pids), "pip outlived the hub"
        install.hub = hub = install.relaunch()
        _, model = hub.api("GET", "/users/guest")
        assert "p" not in model["servers"]  # not left half-way: it may simply be started again
        status, _ = hub.api("POST", "/users/guest/servers/p", {"user_options": {"environment": "scipy"}})
        assert status in (201, 202)
        hub.wait_ready("guest", "p")
        hub.stop_server("guest", "p")


def test_pip_runs_under_the_servers_cpu_and_memory_limits(spawner, tmp_path):
    """Where the limiter enforces limits (here a stand-in cgroup v2 tree), pip joins a group
    with the server's own CPU and memory limits before it starts."""
    groups = tmp_path / "cgroup"
    groups.mkdir()
    spawner.machine._limiter = limits.Limiter("cgroup2", "stand-in", groups)
    python, _ = fake_python(tmp_path, "install")
    plan = spawner.validate_options({"environment": "scipy", "cpu": 2, "memory": "3Gi",
                                     "packages": ["dcloud-probe"]})
    asyncio.run(spawner._install_packages(plan, python, spawner.workdir))
    group = groups / spawner.limiter.unit_name(f"{spawner.owner_key}/packages")
    assert (group / "cpu.max").read_text() == "200000 100000\n"
    assert (group / "memory.max").read_text() == f"{3 * 1024**3}\n"
    assert (group / "cgroup.procs").read_text() == "0\n"  # pip's process joined it before exec


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
            "Your working directory already has datasets and .dcloud-datasets of your own")
    finally:
        spawner.dataset_views().clear()
    assert (mine / "thesis.txt").read_text() == "mine"
    assert (spawner.workdir / ".dcloud-datasets" / "more-of-mine").is_dir()


def test_the_overlay_is_measured_removed_and_limited_off_the_event_loop(spawner, tmp_path, monkeypatch):
    """The overlay walks (its size every half second while pip runs, its removal) and the
    limiter's cgroup writes run in worker threads: on the event loop they would hold every other
    user of the hub for as long as a walk of up to package_overlay_max_bytes takes."""
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

    monkeypatch.setattr(paths, "tree_size", recorded("tree_size", paths.tree_size))
    monkeypatch.setattr(paths, "remove_entry", recorded("remove_entry", paths.remove_entry))
    groups = tmp_path / "cgroup"
    groups.mkdir()
    limiter = limits.Limiter("cgroup2", "stand-in", groups)
    for name in ("prepare", "kill", "cleanup"):
        monkeypatch.setattr(limiter, name, recorded(name, getattr(limiter, name)))
    spawner.machine._limiter = limiter
    spawner.package_overlay_max_bytes = 1024 * 1024
    python, _ = fake_python(tmp_path, "slow-big")
    with pytest.raises(SpawnRefused) as err:
        install(spawner, python)
    assert "more than the 1 MiB" in str(err.value.jupyterhub_message)  # refused while pip still ran
    assert not os.path.lexists(spawner.workdir / OVERLAY)
    names = [name for name, _ in calls]
    assert names.count("tree_size") >= 2 and {"remove_entry", "prepare", "kill", "cleanup"} <= set(names)
    assert [name for name, looped in calls if looped] == []
