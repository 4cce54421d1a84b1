"""The pod KubeSpawner builds from a plan: what the API server would receive."""

import pytest

from tests.support.spawners import make_spawner, pod_for

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")


def containers(pod):
    return pod["spec"]["containers"] + pod["spec"].get("initContainers", [])


def notebook(pod):
    return pod["spec"]["containers"][0]


def assert_restricted(pod):
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(pod):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert not sc.get("privileged")


async def test_cpu_only_pod():
    pod = await pod_for({"environment": "scipy", "cpu": 2, "memory": "8Gi"})
    c = notebook(pod)
    assert c["image"] == "quay.io/jupyter/scipy-notebook:2025-07-07"
    assert c["resources"]["limits"] == {"cpu": 2.0, "memory": 8 * 2**30}
    assert c["resources"]["requests"] == {"cpu": 1.0, "memory": 8 * 2**30}
    assert "tolerations" not in pod["spec"] or not pod["spec"]["tolerations"]
    assert not pod["spec"].get("nodeSelector")
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert pod["metadata"]["labels"]["dcloud.io/gpu-class"] == "none"
    assert_restricted(pod)


async def test_gpu_pod_has_limit_selector_and_toleration():
    pod = await pod_for({"environment": "pytorch", "gpu": {"type": "a100", "count": 2}, "cpu": 8,
                         "memory": "64Gi"}, ["researchers"])
    c = notebook(pod)
    assert c["image"].endswith("notebook-pytorch-cuda:2026.11")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    labels = pod["metadata"]["labels"]
    assert labels["dcloud.io/gpu-class"] == "a100" and labels["dcloud.io/gpu-count"] == "2"
    assert labels["dcloud.io/environment"] == "pytorch"
    assert_restricted(pod)


async def test_mig_pod_uses_the_mig_resource():
    pod = await pod_for({"gpu": {"type": "a100-mig-1g", "count": 1}}, ["researchers"])
    limits = notebook(pod)["resources"]["limits"]
    assert limits["nvidia.com/mig-1g.10gb"] == "1" and "nvidia.com/gpu" not in limits


async def test_shm_is_memory_backed_and_bounded():
    pod = await pod_for({"memory": "2Gi"})
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dcloud-shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}  # half of memory
    assert {"name": "dcloud-shm", "mountPath": "/dev/shm"} in notebook(pod)["volumeMounts"]


async def test_datasets_are_read_only_volumes():
    pod = await pod_for({"datasets": ["imagenet", "coco", "medical-scans"]}, ["medical"])
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dataset-imagenet"]["persistentVolumeClaim"] == {"claimName": "imagenet", "readOnly": True}
    assert volumes["dataset-coco"]["csi"]["driver"] == "nfs.csi.k8s.io"
    assert volumes["dataset-coco"]["csi"]["readOnly"] is True
    mounts = {m["name"]: m for m in notebook(pod)["volumeMounts"]}
    for name, path in [("dataset-imagenet", "/datasets/imagenet"), ("dataset-coco", "/datasets/coco"),
                       ("dataset-medical-scans", "/datasets/medical-scans")]:
        assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}
    assert pod["metadata"]["annotations"]["dcloud.io/datasets"] == "imagenet,coco,medical-scans"


async def test_packages_install_in_an_init_container_as_argv():
    pod = await pod_for({"packages": ["timm>=1.0", 'rich; python_version >= "3.8"']})
    init = pod["spec"]["initContainers"][0]
    assert init["image"] == notebook(pod)["image"]
    assert init["command"][:4] == ["python", "-m", "pip", "install"]
    assert init["command"][-3:] == ["--", "timm>=1.0", 'rich; python_version >= "3.8"']
    assert "args" not in init or not init["args"]
    assert {"name": "dcloud-packages", "mountPath": "/opt/dcloud/packages"} in init["volumeMounts"]
    env = {e["name"]: e["value"] for e in notebook(pod)["env"]}
    assert env["PYTHONPATH"] == "/opt/dcloud/packages"
    assert env["PATH"].startswith("/opt/dcloud/packages/bin:")
    assert_restricted(pod)


@pytest.mark.parametrize("options", [
    {"environment": "pytorch", "packages": ["timm"]},
    {"environment": "pytorch", "gpu": {"type": "a100", "count": 2}, "packages": ["timm"]},
])
async def test_the_package_installer_hides_gpus_itself(options):
    """pip runs the packages' build code: it never sees a GPU, whatever the image or the pod."""
    pod = await pod_for(options, groups=["researchers"])
    (installer,) = pod["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in installer["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "resources" not in installer or "nvidia.com/gpu" not in str(installer["resources"])


async def test_braces_in_user_values_are_not_expanded():
    pod = await pod_for({"packages": ['x; platform_release == "{username}{0.__class__}"']})
    init = pod["spec"]["initContainers"][0]
    assert init["command"][-1] == 'x; platform_release == "{username}{0.__class__}"'
    assert "{username}" in pod["metadata"]["annotations"]["dcloud.io/packages"]


async def test_index_url_comes_from_the_catalog_only(tmp_path, catalog_data):
    import yaml

    catalog_data["packages"]["index_url"] = "https://pypi.internal.example/simple"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_data))
    pod = await pod_for({"packages": ["timm"]}, catalog_path=str(path))
    command = pod["spec"]["initContainers"][0]["command"]
    assert command[command.index("--index-url") + 1] == "https://pypi.internal.example/simple"


async def test_consecutive_plans_do_not_leak_into_each_other():
    spawner = make_spawner(["researchers"])
    await spawner.dcloud_apply_user_options(spawner, {"gpu": {"type": "a100", "count": 1},
                                                      "datasets": ["imagenet"], "packages": ["rich"]})
    await spawner.load_user_options()
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy"})
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    assert not pod.spec.tolerations and not pod.spec.node_selector
    assert not pod.spec.init_containers
    assert [v.name for v in pod.spec.volumes] == ["dcloud-shm"]
    assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})


async def test_pod_never_restarts_and_the_installer_reports_pips_words():
    pod = await pod_for({"environment": "pytorch", "packages": ["timm>=1.0"]})
    assert pod["spec"]["restartPolicy"] == "Never"  # the hub sees a dead server and says why
    (installer,) = pod["spec"]["initContainers"]
    assert installer["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert installer["command"][-2:] == ["--", "timm>=1.0"]


def test_a_failed_package_install_is_told_with_the_package_named(catalog):
    from dcloud_spawner.core.validation import validate
    from dcloud_spawner.kube.failures import package_failure

    plan = validate({"packages": ["NoSuch_Pkg==1.0", "timm"]}, catalog, ["students"])
    pod = {"status": {"initContainerStatuses": [{"name": "dcloud-packages", "state": {"terminated": {
        "exitCode": 1, "reason": "Error",
        "message": "ERROR: Could not find a version that satisfies the requirement nosuch-pkg==1.0 "
                   "(from versions: none)\nERROR: No matching distribution found for nosuch-pkg==1.0\n"}}}]}}
    assert package_failure(pod, plan) == (
        "Extra package 'NoSuch_Pkg==1.0' could not be installed: the package index has no version of it "
        "for this environment. Check its name and version, or leave it out.")
    running = {"status": {"initContainerStatuses": [{"name": "dcloud-packages", "state": {"running": {}}}]}}
    assert package_failure(running, plan) is None
    assert package_failure(None, plan) is None
    unreachable = {"status": {"initContainerStatuses": [{"name": "dcloud-packages", "state": {"terminated": {
        "exitCode": 1, "message": "WARNING: Retrying ... Failed to establish a new connection: refused"}}}]}}
    assert package_failure(unreachable, plan) == (
        "Installing the extra packages failed: the package index could not be reached.")


def test_an_oom_killed_notebook_is_told_in_words(catalog):
    from dcloud_spawner.core.validation import validate
    from dcloud_spawner.kube.failures import out_of_memory

    plan = validate({"memory": "2Gi"}, catalog, ["students"])
    killed = {"status": {"containerStatuses": [{"name": "notebook", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}]}}
    assert out_of_memory(killed, plan) == (
        "Your last server was stopped because it ran out of memory: it used more than its limit of 2Gi, "
        "so the kernel killed it. Choose more memory below, or use less.")
    crashed = {"status": {"containerStatuses": [{"name": "notebook", "state": {"terminated": {
        "exitCode": 1, "reason": "Error"}}}]}}
    assert out_of_memory(crashed, plan) is None


def test_the_catalogs_own_plain_http_index_is_trusted_and_nothing_else(catalog):
    from dcloud_spawner.core.catalog import Catalog
    from dcloud_spawner.core.validation import validate

    data = catalog.model_dump()
    data["packages"]["index_url"] = "http://pypi.lab.example:8080/simple/"
    plan = validate({"packages": ["timm"]}, Catalog.from_data(data), [])
    assert plan.pip_install_command(target="/t") == [
        "python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-cache-dir",
        "--target", "/t", "--index-url", "http://pypi.lab.example:8080/simple/",
        "--trusted-host", "pypi.lab.example:8080", "--", "timm"]
    data["packages"]["index_url"] = "https://pypi.lab.example/simple/"
    plan = validate({"packages": ["timm"]}, Catalog.from_data(data), [])
    assert "--trusted-host" not in plan.pip_install_command()


SHARED_HOME = {"volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
               "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan"}]}


def shared_home_servers(names: list[str]) -> list:
    """Named servers of one user on one home claim (a site's choice), each seeing the others as
    JupyterHub's User lists them."""
    from types import SimpleNamespace

    from dcloud_spawner.hub.offline import OfflineUser

    user = OfflineUser("alice", [])
    servers = []
    for name in names:
        spawner = make_spawner(**SHARED_HOME)
        spawner.user = user
        spawner.orm_spawner = SimpleNamespace(name=name, display_name=name, server=None, state={}, user_options={})
        servers.append(spawner)
    user.all_spawners = lambda: iter(servers)
    return servers


async def installer_of(spawner, packages: list[str]) -> dict:
    """The package init container of a start of ``spawner``'s with ``packages``, as Kubernetes gets it."""
    from kubernetes_asyncio.client import ApiClient

    spawner.clear_state()  # as JupyterHub begins each start
    spawner.dcloud_plan = spawner.validate_options({"packages": packages})
    await spawner.load_user_options()
    async with ApiClient() as client:
        pod = client.sanitize_for_serialization(await spawner.get_pod_manifest())
    (installer,) = pod["spec"]["initContainers"]
    return installer


def run_in(home, installer: dict, fake_pip) -> str:
    """Run the init container's command and environment here, with the home volume at ``home``
    and a stand-in pip; returns its termination message."""
    import subprocess
    import sys

    argv = list(installer["command"])
    argv[0], argv[3] = sys.executable, argv[3].replace("/home/jovyan", str(home))
    pip = argv.index("--") + 1
    argv[pip:pip + 3] = [sys.executable, str(fake_pip)]  # python -m pip
    env = {e["name"]: e["value"].replace("/home/jovyan", str(home)) for e in installer["env"]}
    env["DCLOUD_INSTALL_REPORT"] = str(home.parent / "termination-log")
    env.update(PATH="/usr/bin:/bin", FAKE_PIP_RUNS=str(home.parent / "runs.txt"))
    subprocess.run(argv, env=env, check=True, timeout=120)
    return (home.parent / "termination-log").read_text()


def running(spawner, up: bool = True) -> None:
    from jupyterhub import orm

    spawner.orm_spawner.server = (
        orm.Server(ip="10.0.0.1", port=8888, proto="http", base_url="/", cookie_name="c") if up else None
    )


async def test_servers_on_one_home_claim_never_prune_each_others_packages(tmp_path):
    """A site's servers share one home claim: four run at once, each on its own set, with the
    catalog's default keep of 3. Each init container marks its environment as in use under its
    start's token and is told the tokens of the user's servers whose starts are over (none while
    all run), so the fourth prunes none; once two have stopped, a later start prunes their sets
    past the newest 3. Run here as the init containers' commands, with a stand-in pip."""
    from dcloud_spawner.core.package_envs import IN_USE, env_key
    from tests.core.test_package_envs import FAKE_PIP

    (tmp_path / "fake_pip.py").write_text(FAKE_PIP)
    home = tmp_path / "home"
    servers = shared_home_servers(["one", "two", "three", "four"])
    image = servers[0].validate_options({"packages": ["x"]}).image
    keys = {p: env_key(image, [p], None, []) for p in ("a", "b", "c", "d", "e")}
    for spawner, package in zip(servers, "abcd", strict=True):
        installer = await installer_of(spawner, [package])
        env = {e["name"]: e["value"] for e in installer["env"]}
        assert env["DCLOUD_SERVER"] == f"server-{spawner.name}" and env["DCLOUD_START"] == spawner.dcloud_env_token
        assert env["DCLOUD_ENDED"] == ""  # no other server's start is over
        assert run_in(home, installer, tmp_path / "fake_pip.py") == f"built {keys[package]}"
        running(spawner)
    envs = home / ".dcloud" / "envs"
    assert {p for p, key in keys.items() if (envs / key).is_dir()} == set("abcd")
    one, two, _, four = servers
    running(one, up=False)
    running(four, up=False)
    one.clear_state()  # JupyterHub's after a stop: the token stays in the state it saves
    assert one.get_state()["dcloud_env_token"] == one.dcloud_env_token
    installer = await installer_of(two, ["e"])
    env = {e["name"]: e["value"] for e in installer["env"]}
    assert sorted(env["DCLOUD_ENDED"].split()) == sorted([one.dcloud_env_token, four.dcloud_env_token])
    run_in(home, installer, tmp_path / "fake_pip.py")
    assert {p for p, key in keys.items() if (envs / key).is_dir()} == set("cde")
    assert sorted(p.name for p in (envs / IN_USE).iterdir()) == ["server-three", "server-two"]
