"""DCloudLocalSpawner as a drop-in for LocalProcessSpawner: a site's `cmd`, its option hooks,
and the user's own files in the working directory, with real server processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from tornado import web
from traitlets.config import Config

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.local import DCloudLocalSpawner
from tests.conftest import EXAMPLE_CATALOG

# A site's wrapper: records how it was started, then sleeps like a server would.
WRAPPER = """import json, os, sys, time
with open({report!r}, "w") as f:
    json.dump({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}}, f)
time.sleep(60)
"""


@pytest.fixture
def spawner_for(tmp_path):
    reset_hub_state()

    def make(**settings) -> DCloudLocalSpawner:
        cfg = Config()
        cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
        cfg.DCloudLocalSpawner.server_root = str(tmp_path / "servers")
        cfg.DCloudLocalSpawner.record_root = str(tmp_path / "records")
        cfg.DCloudLocalSpawner.dataset_paths = {"coco": str(tmp_path / "store" / "coco")}
        for key, value in settings.items():
            setattr(cfg.DCloudLocalSpawner, key, value)
        (tmp_path / "store" / "coco").mkdir(parents=True, exist_ok=True)
        (tmp_path / "store" / "coco" / "README.txt").write_text("coco")
        spawner = DCloudLocalSpawner(user=OfflineUser("guest", ["students"]), hub=offline_hub(), config=cfg)
        spawner.workdir.mkdir(parents=True, exist_ok=True)
        return spawner

    yield make
    reset_hub_state()


@pytest.fixture
def wrapper(tmp_path) -> tuple[list[str], Path]:
    report = tmp_path / "started.json"
    script = tmp_path / "site-wrapper.py"
    script.write_text(WRAPPER.format(report=str(report)))
    return [sys.executable, str(script)], report


async def started(spawner: DCloudLocalSpawner, options: dict) -> None:
    """JupyterHub's order: clear the state, apply the options, then start."""
    spawner.user_options = options
    spawner.clear_state()
    await spawner._run_apply_user_options(options)
    await spawner.start()


async def report_of(report: Path) -> dict:
    for _ in range(100):
        if report.exists() and report.stat().st_size:
            return json.loads(report.read_text())
        await asyncio.sleep(0.05)
    raise AssertionError("the site's command never ran")


CPU = {"environment": "scipy", "cpu": 1, "memory": "1Gi"}


async def test_the_sites_cmd_starts_the_server(spawner_for, wrapper):
    command, report = wrapper
    spawner = spawner_for(cmd=command, args=["--debug"])
    await started(spawner, CPU)
    try:
        seen = await report_of(report)
        assert seen["argv"][0] == command[1] and "--debug" in seen["argv"]
        assert seen["env"]["DCLOUD_ENVIRONMENT"] == "scipy" and seen["env"]["CUDA_VISIBLE_DEVICES"] == ""
        assert seen["cwd"] == str(spawner.workdir)
        assert spawner.cmd == command  # the trait is still the admin's, not overwritten
    finally:
        await spawner.stop(now=True)


async def test_a_pre_spawn_hook_may_set_cmd(spawner_for, wrapper):
    command, report = wrapper
    spawner = spawner_for(pre_spawn_hook=lambda s: setattr(s, "cmd", command))
    spawner.user_options = CPU
    spawner.clear_state()
    await spawner._run_apply_user_options(CPU)
    spawner.run_pre_spawn_hook()
    await spawner.start()
    try:
        assert (await report_of(report))["argv"][0] == command[1]
    finally:
        await spawner.stop(now=True)


async def test_without_a_site_cmd_the_environments_python_runs_singleuser(spawner_for, monkeypatch):
    spawner = spawner_for()
    seen = {}

    async def record(self):  # LocalProcessSpawner.start, as far as the command goes
        seen["cmd"] = list(self.cmd)
        raise RuntimeError("stop here")

    monkeypatch.setattr("jupyterhub.spawner.LocalProcessSpawner.start", record)
    with pytest.raises(RuntimeError):
        await started(spawner, CPU)
    assert seen["cmd"][-2:] == ["-m", "jupyterhub.singleuser"]
    assert spawner.cmd == ["jupyterhub-singleuser"]  # the trait itself is untouched


# -- the user's own files ------------------------------------------------------------------


async def test_a_start_and_stop_never_touch_the_users_own_datasets_folder(spawner_for, wrapper):
    command, report = wrapper
    spawner = spawner_for(cmd=command)
    own = spawner.workdir / "datasets"
    (own / "cifar").mkdir(parents=True)
    (own / "cifar" / "train.bin").write_text("my data")
    (own / "notes.txt").write_text("mine")
    (own / "link").symlink_to(own / "cifar")

    await started(spawner, CPU)  # no dataset chosen
    await report_of(report)
    await spawner.stop(now=True)
    assert (own / "cifar" / "train.bin").read_text() == "my data" and (own / "notes.txt").read_text() == "mine"

    report.unlink()
    await started(spawner, {**CPU, "datasets": ["coco"]})
    try:
        env = (await report_of(report))["env"]
        views = Path(env["DCLOUD_DATASETS_DIR"])
        assert views == spawner.workdir / ".dcloud-datasets"
        assert (views / "coco" / "README.txt").read_text() == "coco"
    finally:
        await spawner.stop(now=True)
    assert not views.exists()
    assert sorted(p.name for p in own.iterdir()) == ["cifar", "link", "notes.txt"]
    assert (own / "cifar" / "train.bin").read_text() == "my data" and (own / "link").is_symlink()


# -- the site's own option hooks -------------------------------------------------------------


async def test_a_sites_apply_user_options_runs_and_the_catalog_gate_still_does(spawner_for):
    applied = {}

    def site_hook(spawner, options):
        applied.update(options)
        spawner.environment = {**spawner.environment, "PROJECT": str(options.get("project", ""))}

    spawner = spawner_for(apply_user_options=site_hook, extra_option_fields=["project"])
    spawner.user_options = {**CPU, "project": "p42"}
    await spawner._run_apply_user_options(spawner.user_options)
    assert applied["project"] == "p42" and spawner.environment["PROJECT"] == "p42"
    assert spawner.dcloud_plan is not None and spawner.dcloud_plan.environment.id == "scipy"
    assert spawner.user_options["project"] == "p42"  # kept for the next start

    for bad, field in (({**CPU, "cmd": ["sh"]}, "cmd"), ({**CPU, "gpu": {"type": "a100"}}, "a100")):
        with pytest.raises(web.HTTPError) as err:
            await spawner._run_apply_user_options(bad)
        assert err.value.status_code == 400 and field in err.value.log_message


async def test_a_failing_site_hook_is_a_400_with_one_sentence(spawner_for):
    def site_hook(spawner, options):
        raise ValueError("project must be one of p1, p2")

    spawner = spawner_for(apply_user_options=site_hook)
    with pytest.raises(web.HTTPError) as err:
        await spawner._run_apply_user_options(CPU)
    assert err.value.status_code == 400
    assert err.value.log_message == "These options could not be applied: project must be one of p1, p2"


async def test_a_dict_form_hook_declares_its_fields(spawner_for):
    spawner = spawner_for(apply_user_options={"notebook_dir": "notebook_dir"})
    await spawner._run_apply_user_options({**CPU, "notebook_dir": "/srv/work"})
    assert spawner.notebook_dir == "/srv/work" and spawner.dcloud_plan is not None


async def test_no_hook_at_all_still_means_the_catalog_gate(spawner_for):
    spawner = spawner_for(apply_user_options=None)
    with pytest.raises(web.HTTPError) as err:
        await spawner._run_apply_user_options({"cmd": ["sh", "-c", "id"]})
    assert err.value.status_code == 400 and err.value.log_message.startswith("Unknown field 'cmd'")


async def test_a_start_without_apply_is_refused_in_a_sentence_not_a_500(spawner_for):
    from dcloud_spawner.hub.mixin import SpawnRefused

    spawner = spawner_for()
    spawner.user_options = {"gpu": {"type": "a100"}}
    with pytest.raises(SpawnRefused) as err:
        await spawner.start()
    assert "a100" in err.value.jupyterhub_message
    assert not os.listdir(spawner.workdir)
