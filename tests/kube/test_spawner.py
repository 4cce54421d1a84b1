"""DCloudSpawner's JupyterHub hooks: form in, options stored, plan applied or refused."""

import json
import re
from importlib.metadata import entry_points

import pytest
from tornado import web
from tornado.httputil import HTTPFile

from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.kube import DCloudSpawner
from tests.support.spawners import make_spawner

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")


class FakeOrmSpawner:
    user_options = None
    server = None


def test_registered_as_dcloud_entry_point():
    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "dcloud"]
    assert ep.load() is DCloudSpawner


def test_every_dcloud_setting_documents_itself():
    for name in ("catalog_path", "image_path", "package_install_args", "unschedulable_grace_seconds"):
        trait = DCloudSpawner.class_traits()[name]
        assert trait.metadata.get("config") and len(trait.help) > 40, name


async def test_hooks_are_installed():
    spawner = make_spawner()
    assert spawner.options_form == spawner.dcloud_options_form
    assert spawner.options_from_form == spawner.dcloud_options_from_form
    assert spawner.apply_user_options == spawner.dcloud_apply_user_options
    assert "GPU type" in await spawner.get_options_form()


async def test_an_admins_own_hooks_win():
    """DCloud's hooks are trait defaults: whatever the admin configures, on any class, wins."""
    from traitlets.config import Config

    from dcloud_spawner.hub.offline import OfflineUser, offline_hub
    from tests.conftest import EXAMPLE_CATALOG

    def custom_apply(spawner, options):
        return None

    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(EXAMPLE_CATALOG)
    cfg.DCloudSpawner.show_availability = False
    cfg.Spawner.options_form = "<p>site form</p>"  # the base class's section
    cfg.KubeSpawner.apply_user_options = custom_apply
    spawner = DCloudSpawner(user=OfflineUser("alice"), hub=offline_hub(), config=cfg)
    assert await spawner.get_options_form() == "<p>site form</p>"
    # the admin's hook runs, then the catalog's gate (the contract in hub/mixin.py)
    assert spawner.apply_user_options is not custom_apply and spawner.apply_user_options._dcloud_gated
    assert spawner.options_from_form == spawner.dcloud_options_from_form  # not configured: DCloud's


async def test_form_submission_becomes_normalised_options():
    spawner = make_spawner(["students"])
    options = spawner.run_options_from_form({
        "environment": ["pytorch"], "gpu_type": ["t4"], "gpu_count": ["1"], "cpu": ["4"],
        "memory": ["16384Mi"], "datasets": ["imagenet"], "packages": ["timm>=1.0"],
    })
    assert options == {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}, "cpu": 4.0,
                       "memory": "16Gi", "datasets": ["imagenet"], "packages": ["timm>=1.0"]}
    json.dumps(options)


async def test_refused_form_comes_back_with_choices_and_sentence():
    spawner = make_spawner(["students"])
    with pytest.raises(RequestError) as err:
        spawner.run_options_from_form({
            "environment": ["tensorflow"], "gpu_type": ["a100"], "gpu_count": ["1"], "cpu": ["3"],
            "memory": ["12Gi"], "datasets": ["coco"],
        })
    assert err.value.jupyterhub_message == "GPU class 'a100' is not available to you; you can use: t4."
    html = await spawner.get_options_form()
    assert 'value="tensorflow"' in html and 'value="12Gi"' in html
    assert 'value="3"' in html and 'id="dcloud-dataset-coco" checked' in html
    # the kept attempt is shown once; the next visit starts from the last valid options
    assert 'value="12Gi"' not in await spawner.get_options_form()


async def test_upload_replaces_the_form_and_no_bytes_are_kept():
    spawner = make_spawner(["researchers"])
    upload = HTTPFile(filename="run.yaml", content_type="text/yaml",
                      body=b"environment: tensorflow\ngpu: {type: a100, count: 2}\nmemory: 64Gi\n")
    options = spawner.run_options_from_form({
        "environment": ["pytorch"], "cpu": ["8"], "memory": ["8Gi"], "datasets": ["coco"], "config_file": [upload],
    })
    assert options == {"environment": "tensorflow", "gpu": {"type": "a100", "count": 2}, "cpu": 1.0,
                       "memory": "64Gi", "datasets": [], "packages": []}
    json.dumps(options)


async def test_invalid_upload_is_refused_with_the_field():
    spawner = make_spawner(["researchers"])
    upload = HTTPFile(filename="run.yaml", content_type="text/yaml", body=b"gpu: {type: h100}\n")
    with pytest.raises(RequestError) as err:
        spawner.run_options_from_form({"environment": ["pytorch"], "config_file": [upload]})
    assert "GPU class 'h100' is not available to you" in err.value.sentence


async def test_rest_options_are_validated_and_bad_ones_not_kept():
    spawner = make_spawner(["students"])
    spawner.orm_spawner = FakeOrmSpawner()
    good = {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}}
    await spawner.dcloud_apply_user_options(spawner, good)
    assert spawner.dcloud_plan.gpu.id == "t4"
    bad = {"environment": "pytorch", "image": "evil"}
    spawner.user_options = spawner.orm_spawner.user_options = bad  # as JupyterHub stores them
    with pytest.raises(web.HTTPError) as err:
        await spawner.dcloud_apply_user_options(spawner, bad)
    assert err.value.status_code == 400
    assert err.value.jupyterhub_message.startswith("Unknown field 'image'")
    assert spawner.orm_spawner.user_options["gpu"] == {"type": "t4", "count": 1}
    assert spawner.user_options == spawner.orm_spawner.user_options


async def test_form_preselects_last_valid_options():
    spawner = make_spawner(["researchers"])
    spawner.user_options = {"environment": "tensorflow", "gpu": {"type": "a100", "count": 2}}
    html = await spawner.get_options_form()
    assert 'value="tensorflow" data-gpu="yes"\n              selected' in html
    spawner.user_options = {"environment": "gone"}
    html = await spawner.get_options_form()
    assert "selected" in html and 'value="gone"' not in html


async def test_refusals_are_audited_as_one_json_line(capfd):
    spawner = make_spawner(["students"], name="auditee")
    spawner.orm_spawner = FakeOrmSpawner()
    with pytest.raises(web.HTTPError):
        await spawner.dcloud_apply_user_options(spawner, {"gpu": {"type": "a100"}})
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1])
    assert record == {"event": "refused", "user": "auditee", "server": "", "groups": ["students"],
                      "requested": {"gpu": {"type": "a100"}},
                      "reason": "GPU class 'a100' is not available to you; you can use: t4."}


async def test_a_refused_megabyte_request_writes_a_bounded_clean_audit_line(capfd):
    from dcloud_spawner.hub.audit import MAX_FIELD_CHARS, MAX_REQUESTED_CHARS

    spawner = make_spawner(["students"], name="auditee")
    spawner.orm_spawner = FakeOrmSpawner()
    junk = {"packages": ["x\n{\"event\": \"spawned\"}\x1b[2K" * 100_000], "evil\nkey": "y" * 2**20}
    with pytest.raises(web.HTTPError) as err:
        await spawner.dcloud_apply_user_options(spawner, junk)
    assert err.value.log_message.isprintable() and len(err.value.log_message) < 300
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines[-1]) < MAX_REQUESTED_CHARS + 2 * MAX_FIELD_CHARS
    assert lines[-1].isprintable()  # JSON escapes: no value can break the line or forge another
    record = json.loads(lines[-1])
    assert record["event"] == "refused" and record["reason"].startswith("Unknown field 'evil\\nkey'")
    assert isinstance(record["requested"], str) and record["requested"].endswith("…")


async def test_refused_named_server_form_is_kept_for_the_default_spawners_render():
    # JupyterHub re-renders a refused named-server form through the user's default spawner
    named, default = make_spawner(["students"]), make_spawner(["students"])
    with pytest.raises(RequestError):
        named.run_options_from_form({"environment": ["scipy"], "memory": ["99Gi"]})
    html = await default.get_options_form()
    assert 'value="99Gi"' in html and re.search(r'value="scipy"[^>]*selected', html)


async def test_asking_for_more_gpus_than_the_cluster_has_is_not_told_to_wait():
    from dcloud_spawner.core.availability import GpuAvailability
    from dcloud_spawner.core.errors import CapacityRefusal

    class Live:
        stale_since = None

        def availability(self, catalog):
            return {"t4": GpuAvailability(free=2, total=2, largest_free_block=2)}

    spawner = make_spawner(["researchers"])
    spawner.live_data = Live
    plan = spawner.validate_options({"gpu": {"type": "t4", "count": 3}})
    with pytest.raises(CapacityRefusal) as refusal:
        spawner.check_capacity(plan)
    assert refusal.value.sentence == "The cluster has only 2 NVIDIA T4 16GB GPUs; ask for at most 2."


class StandInWatch:
    """What the spawner reads of the hub's cluster watch: free counts, and pods by key."""

    stale_since = None

    def __init__(self, free: int, total: int = 8) -> None:
        from dcloud_spawner.core.availability import LiveAvailability

        self.live = LiveAvailability()
        self.free, self.total = free, total

    def availability(self, catalog):
        from dcloud_spawner.core.availability import GpuAvailability

        return {"t4": GpuAvailability(free=self.free, total=self.total, largest_free_block=self.free)}

    async def refresh(self):
        pass


async def test_servers_starting_at_once_are_not_given_the_same_free_gpus():
    """Pods just asked for are not in the watch's counts yet: a burst of spawns must not all
    take the same free GPUs (the scheduler would then leave the extra pods unplaceable)."""
    from dcloud_spawner.hub.state import reset_hub_state

    reset_hub_state()
    watch = StandInWatch(free=2)
    one_t4 = {"environment": "pytorch", "gpu": {"type": "t4", "count": 1}}

    def spawner(name: str, groups=("researchers",)) -> DCloudSpawner:
        made = make_spawner(list(groups), name=name)
        made.orm_spawner = FakeOrmSpawner()
        made.live_data = lambda: watch
        return made

    first, second, third = spawner("r1"), spawner("r2"), spawner("r3")
    await first.dcloud_apply_user_options(first, dict(one_t4))
    await second.dcloud_apply_user_options(second, dict(one_t4))
    with pytest.raises(web.HTTPError) as refused:
        await third.dcloud_apply_user_options(third, dict(one_t4))
    assert refused.value.status_code == 400
    assert refused.value.log_message == (
        "No node has 1 free NVIDIA T4 16GB GPU right now (2 of 8 free, 2 of them going to servers starting "
        "now); ask for fewer, or try again when others stop their servers.")

    # the first pod is on a node now: the watch counts it, the spawner no longer does
    watch.live.set_pod(f"{first.namespace}/{first.pod_name}", ("t4-0", (("nvidia.com/gpu", 1),)))
    watch.free = 1
    with pytest.raises(web.HTTPError):
        await third.dcloud_apply_user_options(third, dict(one_t4))
    assert set(DCloudSpawner.starting_servers()) == {("r2", "")}

    second.release_resources()  # its spawn failed: its GPU is free again
    await third.dcloud_apply_user_options(third, dict(one_t4))
    assert set(DCloudSpawner.starting_servers()) == {("r3", "")}

    # a quota's refusal after the capacity check leaves nothing counted as starting
    students = [spawner(f"s{i}", ("students",)) for i in range(5)]
    watch.free, watch.total = 8, 16
    for student in students[:4]:
        await student.dcloud_apply_user_options(student, dict(one_t4))
    with pytest.raises(web.HTTPError) as quota:
        await students[4].dcloud_apply_user_options(students[4], dict(one_t4))
    assert quota.value.log_message.startswith("Quota of group 'students'")
    assert ("s4", "") not in DCloudSpawner.starting_servers()
    reset_hub_state()
