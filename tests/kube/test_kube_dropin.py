"""DCloudSpawner as a drop-in for KubeSpawner: what an admin's hooks and settings put on the
pod stays there, the catalog's plan wins only on what it owns, and security settings either
take effect or are refused in one sentence. Asserted on the pod Kubernetes would receive."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from dcloud_spawner.hub.mixin import SpawnRefused
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.kube import DCloudSpawner
from tests.conftest import EXAMPLE_CATALOG

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")

GPU = {"environment": "pytorch", "gpu": {"type": "a100", "count": 2}, "cpu": 4, "memory": "16Gi"}
CPU = {"environment": "scipy", "cpu": 1, "memory": "2Gi"}


def spawner_with(groups=("researchers",), **settings) -> DCloudSpawner:
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(EXAMPLE_CATALOG)
    cfg.DCloudSpawner.show_availability = False
    for key, value in settings.items():
        setattr(cfg.KubeSpawner, key, value)  # as a site configures KubeSpawner today
    return DCloudSpawner(user=OfflineUser("alice", list(groups)), hub=offline_hub(), config=cfg)


async def start_pod(spawner: DCloudSpawner, options: dict, auth_state: dict | None = None) -> dict:
    """JupyterHub's User.spawn order up to the pod: clear the state, the auth state hook,
    group overrides, apply_user_options, pre_spawn_hook; then KubeSpawner's load_user_options."""
    spawner.user_options = options
    spawner.clear_state()
    await spawner.run_auth_state_hook(auth_state or {"access_token": "tok-123"})
    await spawner.apply_group_overrides()
    await spawner._run_apply_user_options(options)
    spawner.run_pre_spawn_hook()
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as client:
        return client.sanitize_for_serialization(pod)


def auth_state_hook(spawner, auth_state):
    # the common recipe: the user's access token in the notebook's environment
    spawner.environment = {**spawner.environment, "ACCESS_TOKEN": auth_state["access_token"]}


def pre_spawn_hook(spawner):
    spawner.volumes = [*spawner.volumes, {"name": "site-home", "emptyDir": {}}]
    spawner.volume_mounts = [*spawner.volume_mounts, {"name": "site-home", "mountPath": "/site"}]
    spawner.extra_annotations = {**spawner.extra_annotations, "site/owner": spawner.user.name}


GROUP_OVERRIDES = {
    "01-researchers": {
        "groups": ["researchers"],
        "spawner_override": {
            "extra_labels": {"site/team": "research"},
            "tolerations": [{"key": "site/research", "operator": "Exists", "effect": "NoSchedule"}],
            "node_selector": {"site/pool": "research"},
            "environment": {"SITE_GROUP": "researchers"},
        },
    },
}


def container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(pod)["env"]}


def hooked() -> DCloudSpawner:
    return spawner_with(auth_state_hook=auth_state_hook, pre_spawn_hook=pre_spawn_hook,
                        group_overrides=GROUP_OVERRIDES)


async def test_what_the_hooks_set_reaches_the_pod_with_the_plan():
    pod = await start_pod(hooked(), GPU)
    assert env(pod)["ACCESS_TOKEN"] == "tok-123" and env(pod)["SITE_GROUP"] == "researchers"
    assert env(pod)["DCLOUD_ENVIRONMENT"] == "pytorch"
    assert {"name": "site-home", "emptyDir": {}} in pod["spec"]["volumes"]
    assert {"name": "site-home", "mountPath": "/site"} in container(pod)["volumeMounts"]
    assert pod["metadata"]["annotations"]["site/owner"] == "alice"
    assert pod["metadata"]["labels"]["site/team"] == "research"
    assert pod["spec"]["nodeSelector"] == {"site/pool": "research",
                                           "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    keys = [t["key"] for t in pod["spec"]["tolerations"]]
    assert "site/research" in keys and "nvidia.com/gpu" in keys
    assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"


async def test_the_next_start_begins_from_the_config_and_the_hooks_again():
    spawner = hooked()
    await start_pod(spawner, GPU)
    pod = await start_pod(spawner, CPU, auth_state={"access_token": "tok-456"})
    assert env(pod)["ACCESS_TOKEN"] == "tok-456" and env(pod)["DCLOUD_ENVIRONMENT"] == "scipy"
    assert [v["name"] for v in pod["spec"]["volumes"]].count("site-home") == 1  # not added twice
    assert "nvidia.com/gpu" not in container(pod)["resources"].get("limits", {})
    assert pod["spec"]["nodeSelector"] == {"site/pool": "research"}  # the A100 selector went with the plan
    assert [t["key"] for t in pod["spec"]["tolerations"]].count("site/research") == 1
    assert "nvidia.com/gpu" not in [t["key"] for t in pod["spec"]["tolerations"]]


async def test_the_plan_wins_on_what_the_catalog_owns():
    def greedy(spawner):
        spawner.image = "evil/image:latest"
        spawner.mem_limit = "1T"
        spawner.extra_resource_limits = {"nvidia.com/gpu": "8", "site.org/fpga": "1"}
        spawner.environment = {**spawner.environment, "DCLOUD_ENVIRONMENT": "forged"}
        spawner.volumes = [*spawner.volumes, {"name": "dcloud-shm", "hostPath": {"path": "/"}}]

    pod = await start_pod(spawner_with(pre_spawn_hook=greedy), CPU)
    assert container(pod)["image"] != "evil/image:latest"
    assert container(pod)["resources"]["limits"]["memory"] == 2 * 1024**3
    assert container(pod)["resources"]["limits"].get("nvidia.com/gpu") is None  # no GPU the plan did not grant
    assert container(pod)["resources"]["limits"]["site.org/fpga"] == "1"  # not the catalog's: the site's
    assert env(pod)["DCLOUD_ENVIRONMENT"] == "scipy"
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dcloud-shm"]
    assert len(shm) == 1 and "emptyDir" in shm[0]


# -- security settings --------------------------------------------------------------------


async def test_defaults_are_pod_security_restricted():
    pod = await start_pod(spawner_with(), CPU)
    assert container(pod)["securityContext"]["runAsNonRoot"] is True
    assert container(pod)["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


async def test_an_explicit_root_uid_takes_effect():
    pod = await start_pod(spawner_with(uid=0), {**CPU, "packages": ["tqdm"]})
    notebook = container(pod)
    assert notebook["securityContext"]["runAsUser"] == 0
    assert "runAsNonRoot" not in notebook["securityContext"]
    assert "runAsNonRoot" not in pod["spec"]["securityContext"]
    installer = pod["spec"]["initContainers"][0]["securityContext"]
    assert installer["runAsUser"] == 65534 and installer["runAsNonRoot"] is True  # pip needs no root


async def test_allow_privilege_escalation_takes_effect():
    pod = await start_pod(spawner_with(allow_privilege_escalation=True), CPU)
    assert container(pod)["securityContext"]["allowPrivilegeEscalation"] is True
    pod = await start_pod(spawner_with(allow_privilege_escalation=None), CPU)
    assert "allowPrivilegeEscalation" not in container(pod)["securityContext"]


async def test_a_hook_that_sets_root_takes_effect_too():
    pod = await start_pod(spawner_with(pre_spawn_hook=lambda s: setattr(s, "uid", 0)), CPU)
    assert container(pod)["securityContext"]["runAsUser"] == 0
    assert "runAsNonRoot" not in container(pod)["securityContext"]


async def test_a_contradiction_is_refused_in_one_sentence_before_any_pod():
    spawner = spawner_with(uid=0, container_security_context={"runAsNonRoot": True})
    with pytest.raises(SpawnRefused) as err:
        await start_pod(spawner, CPU)
    assert err.value.jupyterhub_message.startswith(
        "The hub's configuration runs container notebook as root (uid 0) and also requires it not to run as root")


# -- profile_list -------------------------------------------------------------------------


async def test_a_configured_profile_list_is_reported():
    spawner = spawner_with(profile_list=[{"display_name": "GPU", "kubespawner_override": {"image": "x"}}])
    problems = spawner.config_problems()
    assert any("profile_list" in p and "ignored" in p for p in problems)
    assert spawner_with().config_problems() == []


def test_the_hub_start_check_and_dcloud_check_report_the_same(tmp_path, offline_kubeconfig):
    from dcloud_spawner import cli

    hub_config = tmp_path / "jupyterhub_config.py"
    hub_config.write_text("c = get_config()\nc.KubeSpawner.profile_list = [{'display_name': 'x'}]\n")
    assert cli.main(["check", str(EXAMPLE_CATALOG), "--hub-config", str(hub_config)]) == 0
    hub_config.write_text("c = get_config()\nc.KubeSpawner.uid = 0\n"
                          "c.KubeSpawner.container_security_context = {'runAsNonRoot': True}\n")
    assert cli.main(["check", str(EXAMPLE_CATALOG), "--hub-config", str(hub_config)]) == 1
    cfg = Config()
    cfg.KubeSpawner.uid = 0
    cfg.KubeSpawner.container_security_context = {"runAsNonRoot": True}
    with pytest.raises(SystemExit) as err:
        DCloudSpawner.check_hub_config(cfg)
    assert str(err.value).startswith("Refused: The hub's configuration runs notebooks as root (uid 0)")
    cfg = Config()
    cfg.KubeSpawner.uid = 0  # alone: takes effect, nothing to say
    assert DCloudSpawner.config_problems_of(cfg) == []
