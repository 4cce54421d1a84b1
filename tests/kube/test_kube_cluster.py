"""DCloudSpawner on a real control plane: API server admission, scheduler, KWOK kubelet.

Everything here runs as the hub's ServiceAccount with Zero to JupyterHub's Role plus
helm-values/rbac.yaml, so a missing verb fails here and not in a user's cluster.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import yaml
from tornado import web

from tests.cluster import layout
from tests.conftest import EXAMPLE_CATALOG
from tests.support.kube_spawners import cluster_spawner

pytestmark = pytest.mark.cluster




def node_pool(core, node_name: str) -> str:
    return core.read_node(node_name).metadata.labels["dcloud.test/pool"]


def owned_objects(core, namespace: str, user: str) -> list[str]:
    selector = f"hub.jupyter.org/username={user}"
    found = [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace, label_selector=selector).items]
    found += [f"pvc/{p.metadata.name}" for p in
              core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items]
    secrets = core.list_namespaced_secret(namespace, label_selector=selector).items
    found += [f"secret/{s.metadata.name}" for s in secrets]
    return found


async def start_and_check(cluster, core, user, groups, options, pool):
    spawner = cluster_spawner(cluster, user, groups)
    await spawner.dcloud_apply_user_options(spawner, options)
    url = await asyncio.wait_for(spawner.start(), timeout=90)
    try:
        assert url.startswith("http://127.1.")
        pod = core.read_namespaced_pod(spawner.pod_name, cluster.namespace)
        assert pod.status.phase == "Running"
        assert node_pool(core, pod.spec.node_name) == pool
        return pod
    finally:
        await spawner.stop(now=True)
        await wait_gone(core, cluster.namespace, user)


async def wait_gone(core, namespace, user, timeout=30):
    deadline = time.monotonic() + timeout
    while owned_objects(core, namespace, user):
        assert time.monotonic() < deadline, owned_objects(core, namespace, user)
        await asyncio.sleep(0.3)


async def test_cpu_server_lands_on_a_cpu_node(cluster, core):
    pod = await start_and_check(cluster, core, "cpu-user", [], {"environment": "scipy", "cpu": 2, "memory": "8Gi"},
                                "cpu")
    assert not pod.spec.tolerations or all(t.key != "nvidia.com/gpu" for t in pod.spec.tolerations)


@pytest.mark.parametrize(
    "gpu, count, pool",
    [("a100", 4, "a100"), ("t4", 1, "t4"), ("a100-mig-1g", 1, "mig")],
)
async def test_gpu_servers_land_on_their_class(cluster, core, gpu, count, pool):
    pod = await start_and_check(cluster, core, f"gpu-{gpu}", ["researchers"],
                                {"environment": "pytorch", "gpu": {"type": gpu, "count": count}, "cpu": 4,
                                 "memory": "32Gi"}, pool)
    resource = "nvidia.com/mig-1g.10gb" if pool == "mig" else "nvidia.com/gpu"
    assert pod.spec.containers[0].resources.limits[resource] == str(count)


async def test_datasets_and_packages_are_accepted_under_restricted(cluster, core):
    pod = await start_and_check(
        cluster, core, "data-user", ["medical"],
        {"environment": "pytorch", "datasets": ["imagenet", "coco", "medical-scans"], "packages": ["rich>=13"]},
        "cpu",
    )
    assert [c.name for c in pod.spec.init_containers] == ["dcloud-packages"]
    claims = {v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim}
    assert claims == {"imagenet", "medical-scans"}


@pytest.fixture
def roomy_catalog(tmp_path):
    """The example catalog, but letting researchers ask for more T4s than any node has."""
    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    next(g for g in data["gpu_classes"] if g["id"] == "t4")["max_count"] = 8
    data["policies"]["groups"]["researchers"]["max_gpus"] = 8
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_unplaceable_request_is_refused_quickly_with_the_reason(cluster, core, roomy_catalog):
    """Without the availability pre-check (or when a race gets past it), the scheduler's
    FailedScheduling event ends the spawn quickly, in the user's terms."""
    spawner = cluster_spawner(cluster, "greedy", ["researchers"], catalog=roomy_catalog, show_availability=False)
    await spawner.dcloud_apply_user_options(spawner, {"environment": "pytorch", "gpu": {"type": "t4", "count": 5}})
    started = time.monotonic()
    with pytest.raises(web.HTTPError) as err:
        await asyncio.wait_for(spawner.start(), timeout=30)
    elapsed = time.monotonic() - started
    assert "No node has 5 free NVIDIA T4 16GB GPUs right now" in err.value.log_message
    assert elapsed < 15, elapsed  # not the 60 s start timeout
    await wait_gone(core, cluster.namespace, "greedy")


async def test_full_gpu_class_is_refused_while_taken(cluster, core):
    holders = []
    try:
        for i in range(4):  # 4 × 4 A100 = all 16 A100s on a100-0 and a100-1
            spawner = cluster_spawner(cluster, f"holder-{i}", ["researchers"])
            await spawner.dcloud_apply_user_options(spawner, {"gpu": {"type": "a100", "count": 4}})
            await asyncio.wait_for(spawner.start(), timeout=60)
            holders.append(spawner)
        late = cluster_spawner(cluster, "late", ["researchers"], show_availability=False)
        await late.dcloud_apply_user_options(late, {"gpu": {"type": "a100", "count": 1}})
        with pytest.raises(web.HTTPError) as err:
            await asyncio.wait_for(late.start(), timeout=30)
        assert "No node has 1 free NVIDIA A100 80GB GPU right now" in err.value.log_message
        await wait_gone(core, cluster.namespace, "late")
    finally:
        for spawner in holders:
            await spawner.stop(now=True)
        for i in range(4):
            await wait_gone(core, cluster.namespace, f"holder-{i}")


async def test_rejected_request_creates_nothing(cluster, core):
    spawner = cluster_spawner(cluster, "mallory", ["students"])
    before = owned_objects(core, cluster.namespace, "mallory")
    for options in ({"gpu": {"type": "a100"}}, {"image": "evil"}, {"packages": ["x @ http://evil/x.whl"]}):
        with pytest.raises(web.HTTPError) as err:
            await spawner.dcloud_apply_user_options(spawner, options)
        assert err.value.status_code == 400
    assert owned_objects(core, cluster.namespace, "mallory") == before == []


def test_rendered_objects_pass_server_side_dry_run(kube_cluster, tmp_path):
    options = tmp_path / "o.yaml"
    options.write_text("environment: pytorch\ngpu: {type: t4, count: 1}\ndatasets: [imagenet, coco]\n"
                       "packages: ['timm>=1.0']\n")
    rendered = subprocess.run(
        [sys.executable, "-m", "dcloud_spawner.cli", "render", "--catalog", str(EXAMPLE_CATALOG),
         "--user", "dry-run", "--groups", "students", "--options", str(options)],
        capture_output=True, text=True, check=True,
    ).stdout
    applied = subprocess.run(
        [str(layout.bin_dir() / "kubectl"), "--kubeconfig", kube_cluster.hub_kubeconfig, "-n", kube_cluster.namespace,
         "apply", "--dry-run=server", "-f", "-"],
        input=rendered, capture_output=True, text=True,
    )
    assert applied.returncode == 0, applied.stderr
    assert "pod/jupyter-dry-run created (server dry run)" in applied.stdout


def test_a_privileged_render_is_refused_by_the_api_server(kube_cluster, tmp_path):
    """The dry-run check above can fail: a pod without the restricted settings is refused."""
    rendered = subprocess.run(
        [sys.executable, "-m", "dcloud_spawner.cli", "render", "--catalog", str(EXAMPLE_CATALOG), "--user", "x"],
        capture_output=True, text=True, check=True,
    ).stdout
    pod = yaml.safe_load(rendered)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    applied = subprocess.run(
        [str(layout.bin_dir() / "kubectl"), "--kubeconfig", kube_cluster.hub_kubeconfig, "-n", kube_cluster.namespace,
         "apply", "--dry-run=server", "-f", "-"],
        input=yaml.safe_dump(pod), capture_output=True, text=True,
    )
    assert applied.returncode != 0
    assert "violates PodSecurity" in applied.stderr
