"""``DCloudLocalSpawner``: the same form and rules, run as local processes on one machine.

For the one-command demo and for a single shared GPU workstation. A plan becomes:

- the environment's Python interpreter running ``jupyterhub-singleuser`` (JupyterLab);
- GPUs pinned with ``CUDA_VISIBLE_DEVICES`` from the machine's GPUs, never two servers on
  the same GPU; CPU-only servers see no GPU;
- CPU and memory limits through cgroup v2 or systemd where possible (``limits.py``);
  the GPUs, their ledger and the limiter are one :class:`LocalMachine` per hub;
- datasets with a local path under ``datasets/<id>`` in the working dir (read-only bind
  mounts where the hub may mount, links elsewhere), or ``.dcloud-datasets/<id>`` where the
  user's own data holds ``datasets``: only what DCloud made is ever removed
  (``dataset_views.py``);
- extra packages built once per set into ``.dcloud/envs/<key>`` in the user's directory by the
  installer every backend shares (``core/package_envs.py``), on ``PYTHONPATH``; a later start
  with the same set runs no pip.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import maybe_future
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default

from ..core import package_envs, refusals
from ..core.errors import CapacityRefusal, Refusal
from ..core.plan import Plan
from ..hub.form import FormContext
from ..hub.mixin import DCloudMixin
from ..hub.package_marks import PackageEnvHolder
from ..hub.state import hub_state
from . import dataset_views, gpus, limits, paths
from .machine import LocalMachine


class DCloudLocalSpawner(DCloudMixin, PackageEnvHolder, LocalProcessSpawner):
    """Runs the user's chosen environment as a local JupyterLab process."""

    run_as_system_users = Bool(
        False,
        config=True,
        help="""Run each server as the UNIX account of the same name (LocalProcessSpawner's
        behaviour; the hub must run as root). When False, servers run as the hub's own user
        in per-user directories under `server_root` (the demo's mode: no isolation).""",
    )

    server_root = Unicode(
        "~/.local/share/dcloud/servers",
        config=True,
        help="""Directory holding one working directory per user and server when
        `run_as_system_users` is False. Datasets live there too; package environments in
        `<user>/.dcloud/envs` beside them, shared by the user's servers.""",
    )

    local_gpus = List(
        Dict(),
        config=True,
        help="""GPUs this machine offers, as [{"index": 0, "uuid": "GPU-...", "name": "Tesla T4"}].
        Empty (default): discover them with nvidia-smi. Set it to hand out only some GPUs.""",
    )

    gpu_class_assignment = Dict(
        config=True,
        help="""GPU class id -> list of local GPU indices, e.g. {"t4": [0, 1]}. By default a
        GPU belongs to the class whose `nvidia.com/gpu.product` node selector equals the GPU's
        name with spaces as dashes (what GPU feature discovery labels nodes with).""",
    )

    dataset_paths = Dict(
        config=True,
        help="""Dataset id -> local directory, for datasets whose catalog source is not a
        host path (e.g. a local copy of a PVC's data). Host-path datasets need no entry.""",
    )

    record_root = Unicode(
        "~/.local/share/dcloud/records",
        config=True,
        help="""Directory of the hub's own records of what it made in users' working
        directories (the dataset views), so that it removes exactly that and never a file
        of the user's, also after a crash. Only the hub's user should be able to write it.""",
    )

    package_install_timeout = Float(
        300.0,
        config=True,
        help="""Seconds pip may take to install a server's extra packages. When it runs
        longer, pip and everything it started are killed and the spawn is refused. Keep it
        below `Spawner.start_timeout`, or the hub gives up on the spawn first.""",
    )

    package_overlay_max_bytes = Integer(
        2 * 1024**3,
        config=True,
        help="""Largest size in bytes of a package environment while it is built, pip's
        temporary files included. A build that grows beyond it is stopped, removed and the
        spawn refused. Environments already built, and pip's cache, do not count (the user's
        own disk usage; `storage.package_environments` bounds how many stay). 0: no limit.""",
    )

    package_env_keep = List(
        Unicode(),
        ["PATH", "LANG", "LC_ALL", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
         "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_CERT"],
        config=True,
        help="""The hub's environment variables pip gets when it installs users' packages
        (with HOME and USER of the server's user). Nothing else of the hub's environment
        reaches pip, so its secrets never reach the build code of a user's package.""",
    )

    @default("default_url")
    def _default_url(self) -> str:
        return "/lab"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cmd_given = "cmd" in kwargs  # even when equal to the default: it was chosen
        self._progress: list[str] = []
        self._gpu_uuids: list[str] = []

    # -- this machine (one per hub: the first spawner's settings make it) ---------------

    def live_data(self) -> LocalMachine:
        return hub_state().part(LocalMachine, self._make_machine)

    def _make_machine(self) -> LocalMachine:
        configured = [gpus.LocalGpu(int(g["index"]), str(g.get("uuid") or f"GPU-local-{g['index']}"),
                                    str(g["name"])) for g in self.local_gpus]
        machine = LocalMachine(configured, self.gpu_class_assignment or None)
        hub_state().serve(self.catalog_path, machine)  # the admin page and metrics read its GPUs
        return machine

    @property
    def machine(self) -> LocalMachine:
        return self.live_data()

    @property
    def limiter(self) -> limits.Limiter:
        return self.machine.limiter

    def form_context(self) -> FormContext:
        found, how = self.machine.inventory()
        notices = []
        if not self.limiter.enforced:
            notices.append(self.limiter.reason)
        help_text = "" if found else f"{how} Servers on this machine are CPU only."
        return FormContext(availability=self.machine.availability(self.catalog), notices=notices,
                           limits_enforced=self.limiter.enforced, gpu_help=help_text)

    def _no_free_gpus(self, plan: Plan, free: int, total: int, reason: str | None = None) -> CapacityRefusal:
        assert plan.gpu is not None
        return CapacityRefusal.short_of_gpus(plan.gpu.display_name, plan.gpu_count, total, f"{free} of {total} free",
                                             reason=reason)

    def check_capacity(self, plan: Plan) -> None:
        if plan.gpu is None:
            return
        members = self.machine.gpus_by_class(self.catalog).get(plan.gpu.id, [])
        free = [g for g in members if self.machine.ledger.holder(g) in (None, self.owner_key)]
        if len(free) < plan.gpu_count:
            raise self._no_free_gpus(plan, len(free), len(members))

    # -- start / stop -------------------------------------------------------------------

    @property
    def owner_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    @property
    def user_dir(self) -> Path:
        """The user's own directory, shared by its servers: its home, or under `server_root`."""
        if self.run_as_system_users:
            return Path(os.path.expanduser(f"~{self.user.name}"))
        return Path(self.server_root).expanduser() / self.user.name

    @property
    def workdir(self) -> Path:
        if self.run_as_system_users:
            return Path(os.path.expanduser(f"~{self.user.name}"))
        server = self.name or "default"
        return Path(self.server_root).expanduser() / self.user.name / server

    def dataset_views(self) -> dataset_views.DatasetViews:
        server = quote(self.name or "", safe="") or "default"
        record = Path(self.record_root).expanduser() / quote(self.user.name, safe="") / f"{server}.datasets.json"
        return dataset_views.DatasetViews(self.workdir, record)

    def make_preexec_fn(self, name: str) -> Any:
        return self._preexec_as_user(self._join_limits)

    def _preexec_as_user(self, join: Callable[[], None] | None, *,
                         die_with_hub: bool = False) -> Callable[[], None]:
        """A pre-exec step: join the limits' group, become the server's user, enter its workdir.

        ``die_with_hub``: the kernel kills the process when the hub dies, for work that only
        the hub can finish or clean up (a package install); servers outlive a hub restart.
        """
        workdir = str(self.workdir)
        setuid = super().make_preexec_fn(self.user.name) if self.run_as_system_users else None
        hub_pid = os.getpid()

        def preexec() -> None:
            if join is not None:
                join()  # before setuid: joining a cgroup needs the hub's rights
            if setuid is not None:
                setuid()
            if die_with_hub:  # after setuid, which resets the parent-death signal
                _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != hub_pid:  # the hub died before the signal was armed
                    os._exit(1)
            os.chdir(workdir)

        return preexec

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.run_as_system_users:
            return super().user_env(env)
        env["USER"] = self.user.name
        env["HOME"] = str(self.workdir)
        return env

    def move_certs(self, paths: dict) -> dict:
        return paths if not self.run_as_system_users else super().move_certs(paths)

    async def progress(self):  # type: ignore[override]
        sent = 0
        while True:
            while sent < len(self._progress):
                yield {"progress": min(90, 10 + 20 * sent), "message": self._progress[sent]}
                sent += 1
            if self._spawn_future is None or self._spawn_future.done():
                break
            await asyncio.sleep(0.2)

    def _say(self, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._progress.append(message)

    async def start(self) -> Any:
        plan = self.planned()
        self._progress = []
        self._say(f"Preparing {plan.summary()}")
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)

        env_extra: dict[str, str] = {}
        machine = self.machine
        await machine.refresh()
        if plan.gpu:
            candidates = machine.gpus_by_class(self.catalog).get(plan.gpu.id, [])
            try:
                chosen = machine.ledger.reserve(self.owner_key, candidates, plan.gpu_count)
            except gpus.NotEnoughGpus as exc:
                self.refuse(self._no_free_gpus(plan, exc.free, exc.total, reason="gpu_unavailable"))
            self._gpu_uuids = [g.uuid for g in chosen]
            env_extra["CUDA_VISIBLE_DEVICES"] = ",".join(str(g.index) for g in chosen)
            env_extra["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in chosen)
            self._say(f"Reserved GPU {env_extra['CUDA_VISIBLE_DEVICES']} ({plan.gpu.display_name})")
        else:
            env_extra["CUDA_VISIBLE_DEVICES"] = ""  # hides every GPU from CUDA
            env_extra["NVIDIA_VISIBLE_DEVICES"] = "void"

        try:
            datasets_env = await self._link_datasets(plan, workdir)
            python = plan.environment.python or sys.executable
            if plan.packages:
                packages = await self._install_packages(plan, python)
                env_extra["PYTHONPATH"] = str(packages)
                env_extra["PATH"] = f"{packages / 'bin'}:{os.environ.get('PATH', '')}"
            else:
                self.mark_package_env(False)  # the last start's environment is no longer this server's
            env_extra.update(plan.environment_variables())
            env_extra["DCLOUD_LIMITS_ENFORCED"] = "1" if self.limiter.enforced else "0"
            env_extra.update(datasets_env)
            self._env_extra = env_extra
            self._join_limits = await asyncio.to_thread(self.limiter.prepare, self.owner_key, plan.cpu_limit,
                                                        plan.memory_limit)
            # The site's own command (a wrapper that loads modules or activates conda) wins;
            # the environment's Python runs jupyterhub-singleuser only where there is none.
            command = list(self.cmd) if self.site_cmd() else [python, "-m", "jupyterhub.singleuser"]
            configured = self.cmd
            # LocalProcessSpawner.start reads self.cmd before its first await; the trait
            # itself is put back at once, so the admin's (or a hook's) value stays theirs
            self.cmd = self.limiter.wrap(command, self.owner_key, plan.cpu_limit, plan.memory_limit)
            if not self.limiter.enforced:
                self.log.warning("%s: %s", self._log_name, self.limiter.reason)
            self._say("Starting JupyterLab")
            try:
                url = await super().start()
            finally:
                self.cmd = configured
        except BaseException:
            machine.ledger.release(self.owner_key)
            self.release_resources()
            raise
        self.audit("spawned", self.user_options, granted=plan.summary(),
                   gpus=env_extra.get("CUDA_VISIBLE_DEVICES"))
        return url

    def site_cmd(self) -> bool:
        """Whether the admin (config) or a hook of this start set ``cmd``; the Spawner
        default, ``jupyterhub-singleuser``, would be the hub's own Python, not the environment's."""
        if not self.cmd:
            return False
        if self._cmd_given:
            return True
        sections = [cls.__name__ for cls in type(self).mro()]
        if any(name in self.config and "cmd" in self.config[name] for name in sections):
            return True
        return list(self.cmd) != list(LocalProcessSpawner.class_traits()["cmd"].default())

    def get_args(self) -> list[str]:
        args = super().get_args()
        if os.geteuid() == 0 and not self.run_as_system_users:
            # a hub run as root (e.g. in a container) runs the demo's servers as root too
            args.append("--ServerApp.allow_root=True")
        return args

    _env_extra: dict[str, str] = {}
    _join_limits: Any = None

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self._env_extra)
        return env

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        await self._clear_datasets()
        self.machine.ledger.release(self.owner_key)
        self.release_resources()
        await asyncio.to_thread(self.limiter.cleanup, self.owner_key)
        self._gpu_uuids = []
        self.audit("stopped", self.user_options)

    async def delete_forever(self) -> None:
        """The named server is deleted: its package environment's marker goes with it, as no
        later start of its name would replace it (the hub lists only existing servers' starts)."""
        await maybe_future(super().delete_forever())
        await asyncio.to_thread(self._drop_package_marker)

    def _drop_package_marker(self) -> None:
        with contextlib.suppress(OSError):
            fd = paths.open_dir(self.user_dir, *_ENVS, package_envs.IN_USE)
            try:
                os.unlink(package_envs.slot(self.name), dir_fd=fd)
            finally:
                os.close(fd)

    async def poll(self) -> int | None:
        status = await super().poll()
        if status is not None:
            self.machine.ledger.release(self.owner_key)
            self.release_resources()
        return status

    def get_state(self) -> dict:
        state = super().get_state()
        if self._gpu_uuids:
            state["dcloud_gpus"] = self._gpu_uuids
        if self.pid:
            state.update(self.dcloud_state())
        state.update(self.package_env_state())  # also once stopped: the user's other starts read it
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self._gpu_uuids = list(state.get("dcloud_gpus", []))
        if self._gpu_uuids:
            self.machine.ledger.adopt(self.owner_key, self._gpu_uuids)
        if self.pid:
            self.load_dcloud_state(state)
        self.load_package_env_state(state)

    # -- datasets and packages ----------------------------------------------------------

    def dataset_path(self, dataset: Any) -> Path | None:
        if dataset.id in self.dataset_paths:
            return Path(self.dataset_paths[dataset.id]).expanduser()
        if dataset.source.type == "host_path":
            return Path(dataset.source.path)
        return None

    async def _clear_datasets(self) -> None:
        views = self.dataset_views()
        try:
            left = await asyncio.to_thread(views.clear)
        except OSError as exc:
            self.log.warning("%s: dataset views: %s", self._log_name, exc)
            return
        if left:
            self.log.info("%s: left alone in the dataset views (not DCloud's): %s", self._log_name,
                          ", ".join(left))

    async def _link_datasets(self, plan: Plan, workdir: Path) -> dict[str, str]:
        """Make the server's dataset views; return their environment variables."""
        sources = []
        for dataset in plan.datasets:
            source = self.dataset_path(dataset)
            if source is None or not source.is_dir():
                self._say(f"Dataset {dataset.id} has no local copy on this machine; skipped")
                continue
            sources.append((dataset.id, source))
        views = self.dataset_views()
        try:
            how = await asyncio.to_thread(views.build, sources)
        except dataset_views.FolderTaken as exc:
            self.refuse(refusals.dataset_folders_taken(exc.names))
        except OSError as exc:
            self.log.warning("%s: dataset views: %s", self._log_name, exc)
            self.refuse(refusals.dataset_folder_changed())
        folder = views.folder
        if how and folder is not None:
            where = folder.name
            if where != paths.DATASETS:
                where += f" ({paths.DATASETS} holds your own files, which DCloud never touches)"
            self._say(f"Datasets in {where}: " + ", ".join(f"{k} ({v})" for k, v in how.items()))
        if "linked" in how.values():
            self.log.warning("%s: datasets are links, not read-only mounts (the hub cannot mount "
                             "here); the source directories' permissions decide writes", self._log_name)
        return {
            "DCLOUD_DATASETS_READ_ONLY": "1" if all(v == "read-only" for v in how.values()) else "0",
            "DCLOUD_DATASETS_DIR": str(folder) if how and folder is not None else "",
        }

    def _package_env(self) -> dict[str, str]:
        """pip's environment: the server user's HOME and USER and an admin-chosen few of the
        hub's variables; never the hub's secrets (API tokens, cookie secret, proxy token)."""
        env = {key: os.environ[key] for key in self.package_env_keep if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.setdefault("LANG", "C.UTF-8")
        env.update(HOME=str(self.workdir), USER=self.user.name, PYTHONDONTWRITEBYTECODE="1")
        return env

    async def _python_identity(self, python: str) -> str:
        """The environment's "image" in its package key: the interpreter's path and version,
        asked of it as the server's user (a changed interpreter builds its packages anew)."""
        proc = await asyncio.create_subprocess_exec(
            python,
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.version)",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=self._package_env(),
            preexec_fn=self._preexec_as_user(None, die_with_hub=True),
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        except BaseException:
            _kill_group(proc.pid)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(proc.wait(), 5)
            raise
        # no version (it failed): the install with the same interpreter says why in pip's words
        version = out.decode(errors="replace").strip() if proc.returncode == 0 else ""
        return f"local:{python} {version}"

    async def _install_packages(self, plan: Plan, python: str) -> Path:
        """Make (or reuse) the plan's package environment in the user's directory, as the
        server's user; returns its folder.

        The shared installer runs as the server's user (its uid, its limits, a minimal
        environment) and makes every write; the hub only measures this build's folder without
        following links and removes it with fd-based calls that never leave it. Both walk a tree
        of up to ``package_overlay_max_bytes``, and the limiter writes to the cgroup file
        system: a worker thread does each, so the hub's event loop serves every other user
        meanwhile.
        """
        home = self.user_dir
        key = await self._package_key(plan, python)
        if not await asyncio.to_thread(paths.is_file_at, home, *_ENVS, key, package_envs.COMPLETE):
            self._say(f"Installing extra packages: {', '.join(plan.packages)}")
        build = _Build(home, key, secrets.token_hex(8), f"{self.owner_key}/packages")
        # this server runs on it from now on: no prune of another start of the user's takes it
        marks = self.mark_package_env(True)
        run = await self._watched_install(plan, build, *self._installer_command(plan, python, build, marks))
        await self._install_outcome(plan, build, run)
        return home / package_envs.ENVS_DIR / key

    async def _package_key(self, plan: Plan, python: str) -> str:
        """The environment's key: the interpreter as the server's user runs it, and the set."""
        identity = await self._python_identity(python)
        return package_envs.env_key(identity, plan.packages, plan.package_index_url, self.package_install_args)

    def _installer_command(self, plan: Plan, python: str, build: _Build,
                           marks: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """The installer's argv (in the limiter's scope) and its whole environment (``marks``:
        this start's marker of the environment as in use)."""
        pip = plan.pip_install_command(python, admin_args=self.package_install_args, cache=True)
        envs = str(build.home / package_envs.ENVS_DIR)
        installer = package_envs.installer_argv(python, envs, build.key, plan.package_environments, pip)
        env = {
            **self._package_env(),
            "PIP_CACHE_DIR": str(build.home / package_envs.PIP_CACHE_DIR),  # the user's own: never shared
            "PIP_NO_WARN_SCRIPT_LOCATION": "1",
            "DCLOUD_BUILD_TAG": build.tag,
            "DCLOUD_BUILD_TMP": "1",  # pip's temporary files are measured with the build
            "DCLOUD_MAX_BYTES": str(self.package_overlay_max_bytes),  # checked once more before publishing
            "DCLOUD_DIE_WITH_PARENT": "1",
            **marks,
        }
        return self.limiter.wrap(installer, build.owner, plan.cpu_limit, plan.memory_limit), env

    async def _watched_install(self, plan: Plan, build: _Build, argv: list[str], env: dict[str, str]) -> _InstallRun:
        """Run the installer to its end, or until it is stopped for its time or size; a
        cancellation (the spawn stopped, the hub going down) kills it and removes its build."""
        join = await asyncio.to_thread(self.limiter.prepare, build.owner, plan.cpu_limit, plan.memory_limit)
        # its report ("built <key>", "reused <key>") comes through a pipe, apart from its output,
        # where an interpreter's warning may come first; an inherited descriptor, as the
        # installer, running as the server's user, could not open the hub's pipe by path
        report, report_end = os.pipe()
        proc: asyncio.subprocess.Process | None = None
        reader: asyncio.Future[None] | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**env, "DCLOUD_INSTALL_REPORT_FD": str(report_end)},
                pass_fds=(report_end,),
                preexec_fn=self._preexec_as_user(join, die_with_hub=True),
                start_new_session=True,  # its own process group
            )
            os.close(report_end)  # the installer's copy alone remains: the pipe ends with it
            report_end = -1
            output = bytearray()
            assert proc.stdout is not None
            reader = asyncio.ensure_future(_keep_tail(proc.stdout, output))
            refusal = await self._until_done(proc, build)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader, 5)  # a process outside the group may hold the pipe
            return _InstallRun(proc.returncode, output.decode(errors="replace"), _read_report(report), refusal)
        except BaseException:
            if reader is not None:
                reader.cancel()
            if proc is not None:
                _kill_group(proc.pid)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(proc.wait(), 5)  # reap it: no zombie, no open pipe
            await _to_the_end(paths.remove_entries, build.home, _ENVS, build.folder)
            raise
        finally:
            for fd in (report, report_end):
                if fd >= 0:
                    os.close(fd)
            await _to_the_end(self._end_limits, build.owner)

    async def _until_done(self, proc: asyncio.subprocess.Process, build: _Build) -> Refusal | None:
        """Wait for the installer, looking every half second at its time and its build's size;
        returns the refusal it was killed for, if any. Whatever pip left in its group goes."""
        deadline = time.monotonic() + self.package_install_timeout
        limit = self.package_overlay_max_bytes
        refusal: Refusal | None = None
        while proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.5)
            if proc.returncode is not None:
                break
            if time.monotonic() > deadline:
                refusal = refusals.packages_too_slow(self.package_install_timeout)
            elif limit and await self._build_size(build.home, _ENVS, build.folder, limit) > limit:
                refusal = self._packages_too_big()
            if refusal is not None:
                _kill_group(proc.pid)
                await proc.wait()
        _kill_group(proc.pid)
        return refusal

    async def _install_outcome(self, plan: Plan, build: _Build, run: _InstallRun) -> None:
        """Refuse a failed install, its half-built folder removed; or say what the installer did."""
        refusal = run.refusal
        if refusal is None and run.returncode == package_envs.TOO_BIG:
            refusal = self._packages_too_big()
        elif refusal is None and run.returncode != 0:
            refusal = refusals.packages_failed(plan.install_failure(run.output))
        if refusal is not None:
            # a killed installer could not remove its half-built folder; it was never published
            await _to_the_end(paths.remove_entries, build.home, _ENVS, build.folder)
            self.refuse(refusal)  # audited and counted like every refusal
        reused = run.report == f"reused {build.key}"
        where = "your home" if self.run_as_system_users else "your directory"
        self._say(package_envs.outcome(reused, plan.packages, where))

    @staticmethod
    async def _build_size(home: Path, folder: tuple[str, ...], building: str, limit: int) -> int:
        """This build's size (counted up to just past ``limit``), walked in a worker thread."""
        return await asyncio.to_thread(paths.entries_size, home, folder, building, stop_at=limit)

    def _end_limits(self, owner: str) -> None:
        self.limiter.kill(owner)
        self.limiter.cleanup(owner)

    def _packages_too_big(self) -> Refusal:
        return refusals.packages_too_big(paths.format_bytes(self.package_overlay_max_bytes))


_PR_SET_PDEATHSIG = 1
_ENVS = Path(package_envs.ENVS_DIR).parts  # the environments' folder, as paths' functions take it


@dataclass(frozen=True)
class _Build:
    """One run of the installer: the user's directory, the environment, and this run's names."""

    home: Path
    key: str
    tag: str  # in the name of this build's folder, and of no other build's
    owner: str  # the limiter's name for its processes

    @property
    def folder(self) -> str:
        return f".building-{self.key}-{self.tag}"  # as the installer names it (a suffix follows)


@dataclass(frozen=True)
class _InstallRun:
    """How a run of the installer ended."""

    returncode: int | None
    output: str  # the tail of its output (pip's), for a failure's sentence
    report: str  # what it reported: "built <key>", "reused <key>", or nothing
    refusal: Refusal | None  # why the hub stopped it, if it did


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    """Read the installer's output to its end, keeping the last 64 KiB: pip's tail is enough."""
    while chunk := await stream.read(65536):
        tail.extend(chunk)
        del tail[:-65536]


def _read_report(fd: int) -> str:
    """The installer's report, from the pipe's read end once it has ended; empty where it
    reported nothing (killed, failed). Never waits: a process that kept the pipe open is no report."""
    os.set_blocking(fd, False)
    report = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            report += chunk
            if len(report) > 4096:
                break
    return report.decode(errors="replace").strip()


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


async def _to_the_end(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a worker thread, off the event loop; a cancellation of the caller
    meanwhile (the spawn stopped) does not stop it, so a removal or cleanup is never left half-done."""
    return await asyncio.shield(asyncio.to_thread(function, *args))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
