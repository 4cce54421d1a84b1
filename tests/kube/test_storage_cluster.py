"""Storage on a real control plane: classes the cluster lacks, claims no provisioner serves,
group quotas of home volumes, and a home volume's use in the form (node real-0's kubelet).

The test cluster's default class, dcloud-local, provisions real volumes on real-0 (see
tests/cluster/README.md; tests/browser/test_storage_real.py sizes and grows them). These tests
need what it does not do: a StorageClass of their own whose provisioner does not exist keeps its
claims Pending for real (the API server, the PV controller and the scheduler are Kubernetes'
own), and a volume that must be a given folder is a static PersistentVolume bound to the claim
KubeSpawner will make. Everything runs as the hub's ServiceAccount with Zero to JupyterHub's Role
plus helm-values/rbac.yaml.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jupyterhub.spawner import SpawnException
from kubernetes.client import ApiException, StorageV1Api

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.kube import DCloudSpawner
from tests.conftest import EXAMPLE_CATALOG
from tests.support.kube_spawners import cluster_spawner
from tests.support.real_node import require_real_node, spawner_config, write_catalog

pytestmark = pytest.mark.cluster

GI = 1024**3
NOBODY = "dcloud.test/nobody"  # a provisioner that does not exist
STATIC = "dcloud-test-static"  # volumes made by hand, bound to the claims named in them
HOME = {
    "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
    "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan"}],
    "storage_pvc_ensure": True,
}


def catalog_with(
    path: Path, home_class: str | None = STATIC, scratch_class: str | None = None, source: Path = EXAMPLE_CATALOG
) -> Path:
    data = yaml.safe_load(source.read_text())
    data["storage"] = {"home": {"storage_class": home_class, "min": "1Gi", "default": "2Gi", "max": "50Gi"}}
    if scratch_class is not None:
        data["storage"]["scratch"] = {"storage_class": scratch_class, "min": "1Gi", "default": "1Gi", "max": "4Gi"}
    data["quotas"] = {"groups": {"students": {"max_home": "20Gi"}}}
    path.write_text(yaml.safe_dump(data))
    return path


def objects_of(core, namespace: str, user: str) -> list[str]:
    selector = f"hub.jupyter.org/username={user}"
    found = [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace, label_selector=selector).items]
    return found + [
        f"pvc/{c.metadata.name}"
        for c in core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items
    ]


async def wait_for(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)
    return found


@contextmanager
def storage_class(kube_cluster, name: str, provisioner: str, binding: str = "Immediate"):
    from kubernetes import config as sync_config

    api = sync_config.new_client_from_config(config_file=kube_cluster.admin_kubeconfig)
    storage = StorageV1Api(api)
    storage.create_storage_class(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner,
            "volumeBindingMode": binding,
        }
    )
    try:
        yield name
    finally:
        storage.delete_storage_class(name)
        api.close()


def delete_claims(core, namespace: str, *names: str) -> None:
    for name in names:
        try:
            core.delete_namespaced_persistent_volume_claim(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def static_volume(core, name: str, claim: str, namespace: str, size: str, **source) -> None:
    """A PersistentVolume bound in advance to ``claim`` (made later by KubeSpawner)."""
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": STATIC,
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": namespace, "name": claim},
                **(source or {"hostPath": {"path": f"/tmp/{name}"}}),
            },
        }
    )


def delete_volume(core, name: str) -> None:
    try:
        core.delete_persistent_volume(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


# -- a class the cluster lacks: refused before anything is made ---------------------------------


@pytest.mark.parametrize(
    "field, sentence",
    [
        (
            "home",
            "Home size: the storage class 'dcloud-test-gone' that your home volume is made on does not exist on "
            "this cluster, so nothing was created; tell the administrators (catalog storage.home.storage_class).",
        ),
        (
            "scratch",
            "Scratch size: the storage class 'dcloud-test-gone' that your scratch disk is made on does not "
            "exist on this cluster, so nothing was created; tell the administrators (catalog "
            "storage.scratch.storage_class).",
        ),
    ],
)
async def test_a_class_the_cluster_lacks_is_refused_before_anything_is_made(cluster, core, tmp_path, field, sentence):
    path = catalog_with(
        tmp_path / "catalog.yaml",
        home_class="dcloud-test-gone" if field == "home" else None,
        scratch_class="dcloud-test-gone" if field == "scratch" else None,
    )
    spawner = cluster_spawner(cluster, "nocls", ["students"], catalog=path, **HOME)
    with pytest.raises(SpawnException) as err:
        await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "cpu": 1, "memory": "1Gi"})
    assert err.value.status_code == 400 and err.value.jupyterhub_message == sentence
    assert objects_of(core, cluster.namespace, "nocls") == []


# -- a claim no provisioner serves: one sentence after the grace time, the pod gone, home kept --


@pytest.mark.parametrize("binding", ["Immediate", "WaitForFirstConsumer"])
async def test_a_home_volume_nothing_provisions_ends_the_start_and_its_claim_is_kept(
    cluster, core, kube_cluster, tmp_path, binding
):
    user = f"nopv-{binding.lower()[:4]}"
    with storage_class(kube_cluster, f"dcloud-test-nobody-{binding.lower()[:4]}", NOBODY, binding) as name:
        path = catalog_with(tmp_path / "catalog.yaml", home_class=name)
        spawner = cluster_spawner(cluster, user, ["students"], catalog=path, volume_pending_grace_seconds=3, **HOME)
        try:
            await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "3Gi"})
            began = time.monotonic()
            with pytest.raises(SpawnException) as err:
                await asyncio.wait_for(spawner.start(), timeout=50)
            assert err.value.jupyterhub_message == (
                f"Home size: storage class '{name}' did not provision your home volume within 3 seconds, so the "
                "server was not started (its claim is kept for your next start); try again later, and tell the "
                "administrators if it lasts."
            )
            assert time.monotonic() - began < 30  # the grace time, not the 60 s start timeout
            await wait_for(
                lambda: objects_of(core, cluster.namespace, user) == [f"pvc/{spawner.pvc_name}"],
                "the pod was left behind, or the claim deleted",
            )
            claim = core.read_namespaced_persistent_volume_claim(spawner.pvc_name, cluster.namespace)
            assert claim.status.phase == "Pending" and claim.spec.resources.requests["storage"] == "3Gi"
            # what the group quotas read: DCloud's label and the owner's groups
            assert claim.metadata.labels["dcloud.io/volume"] == "home"
            assert json.loads(claim.metadata.annotations["dcloud.io/groups"]) == ["students"]
        finally:
            await spawner.stop(now=True)
            delete_claims(core, cluster.namespace, spawner.pvc_name)


async def test_a_claim_waiting_for_a_node_is_not_cut_by_the_volume_s_grace(cluster, core, kube_cluster, tmp_path):
    """WaitForFirstConsumer: while no node fits the pod (a cluster autoscaler would be adding one),
    the scheduler chooses none and the claim waits unprovisioned; the site's raised
    unschedulable_grace_seconds decides, not the volume's shorter grace."""
    user = "nopv-node"
    with storage_class(kube_cluster, "dcloud-test-nobody-node", NOBODY, "WaitForFirstConsumer") as name:
        path = catalog_with(tmp_path / "catalog.yaml", home_class=name)
        spawner = cluster_spawner(cluster, user, ["students"], catalog=path, volume_pending_grace_seconds=2,
                                  unschedulable_grace_seconds=8, node_selector={"dcloud.test/autoscaled": "yes"},
                                  **HOME)
        try:
            await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "3Gi"})
            began = time.monotonic()
            with pytest.raises(SpawnException) as err:
                await asyncio.wait_for(spawner.start(), timeout=50)
            assert err.value.jupyterhub_message == "No node of the chosen kind exists or accepts this server right now."
            assert time.monotonic() - began >= 8
            claim = core.read_namespaced_persistent_volume_claim(spawner.pvc_name, cluster.namespace)
            assert "volume.kubernetes.io/selected-node" not in (claim.metadata.annotations or {})
        finally:
            await spawner.stop(now=True)
            delete_claims(core, cluster.namespace, spawner.pvc_name)


async def test_a_scratch_disk_nothing_provisions_ends_the_start(cluster, core, kube_cluster, tmp_path):
    with storage_class(kube_cluster, "dcloud-test-nobody-scratch", NOBODY) as name:
        path = catalog_with(tmp_path / "catalog.yaml", home_class=None, scratch_class=name)
        spawner = cluster_spawner(cluster, "noscratch", ["students"], catalog=path, volume_pending_grace_seconds=3)
        await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "scratch": "2Gi"})
        with pytest.raises(SpawnException) as err:
            await asyncio.wait_for(spawner.start(), timeout=50)
        assert err.value.jupyterhub_message == (
            f"Scratch size: storage class '{name}' did not provision your scratch disk within 3 seconds, so the "
            "server was not started; try again later, and tell the administrators if it lasts."
        )
        await wait_for(lambda: objects_of(core, cluster.namespace, "noscratch") == [], "the pod was left behind")


# -- group quotas of home volumes: stopped servers' volumes count ------------------------------


async def test_a_group_s_home_volumes_count_while_their_servers_are_stopped(cluster, core, kube_cluster, tmp_path):
    path = catalog_with(tmp_path / "catalog.yaml")
    owner = cluster_spawner(cluster, "homeq-ann", ["students"], catalog=path, **HOME)
    static_volume(core, "dcloud-test-homeq-ann", owner.pvc_name, cluster.namespace, "8Gi")
    with storage_class(kube_cluster, STATIC, "kubernetes.io/no-provisioner"):
        try:
            await owner.dcloud_apply_user_options(owner, {"environment": "scipy", "cpu": 1, "home": "8Gi"})
            await asyncio.wait_for(owner.start(), timeout=60)
            await owner.stop(now=True)  # the volume stays, and keeps counting
            reset_hub_state()  # as after a hub restart: what counts is read from the cluster

            late = cluster_spawner(cluster, "homeq-bo", ["students"], catalog=path, **HOME)
            with pytest.raises(SpawnException) as err:
                await late.dcloud_apply_user_options(late, {"environment": "scipy", "home": "15Gi"})
            assert err.value.jupyterhub_message == (
                "Home size 15Gi would take group 'students' past its 20Gi of home volumes, since its other members "
                "already hold 8Gi; ask for at most 12Gi."
            )
            assert objects_of(core, cluster.namespace, "homeq-bo") == []

            # two members at once, each fitting alone (8 + 7 + 7 > 20): exactly one is let through
            racers = [cluster_spawner(cluster, f"homeq-r{i}", ["students"], catalog=path, **HOME) for i in range(2)]
            outcomes = await asyncio.gather(
                *(s.dcloud_apply_user_options(s, {"environment": "scipy", "home": "7Gi"}) for s in racers),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, SpawnException)]
            assert len(refused) == 1 and "already hold 15Gi; ask for at most 5Gi." in refused[0].jupyterhub_message
            assert outcomes.count(None) == 1
            # the owner grows within the room left; others in no group with a quota are not counted
            await owner.dcloud_apply_user_options(owner, {"environment": "scipy", "cpu": 1, "home": "8Gi"})
        finally:
            await owner.stop(now=True)
            delete_claims(core, cluster.namespace, owner.pvc_name)
            delete_volume(core, "dcloud-test-homeq-ann")


# -- the form: the home volume's size, and its use where a running server mounts it ------------


def shown_use(html: str) -> int:
    match = re.search(r"Your home volume is 2Gi now, ([\d.]+)(Ki|Mi|Gi|Ti) used; it only grows\.", html)
    assert match, "the form does not show the home volume's size and use"
    return int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)[0]) + 1))


async def test_the_form_shows_the_home_volume_s_size_and_what_the_kubelet_says_is_used(
    cluster, core, kube_cluster, tmp_path
):
    require_real_node(kube_cluster)
    folder = tmp_path / "home"  # real-0 runs on this machine: the volume is a folder here
    folder.mkdir()
    os.chmod(folder, 0o777)
    path = catalog_with(tmp_path / "catalog.yaml", source=write_catalog(tmp_path / "real.yaml", "http://unused"))
    # one home for all of the user's servers, as sites that share it set
    config = {**spawner_config(path), **HOME, "pvc_name_template": "claim-{username}"}
    first = cluster_spawner(cluster, "homeuse", ["students"], **config)
    affinity = {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["real-0"]}]}
            ]
        }
    }
    static_volume(
        core,
        "dcloud-test-homeuse",
        first.pvc_name,
        cluster.namespace,
        "2Gi",
        local={"path": str(folder)},
        nodeAffinity=affinity,
    )
    with storage_class(kube_cluster, STATIC, "kubernetes.io/no-provisioner"):
        try:
            await first.dcloud_apply_user_options(
                first, {"environment": "scipy", "cpu": 1, "memory": "1Gi", "home": "2Gi"}
            )
            await asyncio.wait_for(first.start(), timeout=90)
            # the form of the user's second server, while the first runs
            second = DCloudSpawner(
                user=OfflineUser("homeuse", ["students"]),
                hub=offline_hub(),
                config=first.config,
                orm_spawner=SimpleNamespace(name="second", server=None, user_options={}, state={}),
            )
            assert second.pvc_name == first.pvc_name

            def kubelet_reports() -> int | None:  # its volume stats begin within a minute of the pod
                summary = json.loads(
                    core.connect_get_node_proxy_with_path("real-0", "stats/summary", _preload_content=False).data
                )
                return next(
                    (
                        v["usedBytes"]
                        for p in summary["pods"]
                        for v in p.get("volume", [])
                        if v.get("pvcRef", {}).get("name") == first.pvc_name
                    ),
                    None,
                )

            await wait_for(kubelet_reports, "the kubelet never reported the volume", timeout=120)
            html = await second.get_options_form()
            stat = os.statvfs(folder)  # a local volume's use is its file system's
            used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
            assert abs(shown_use(html) - used) < 0.1 * used
            assert "2Gi to 50Gi" in html  # the home volume only grows: its size is the least to ask for

            await first.stop(now=True)
            reset_hub_state()
            html = await second.get_options_form()
            assert "Your home volume is 2Gi now; it only grows." in html  # no server mounts it: no use to tell
        finally:
            await first.stop(now=True)
            delete_claims(core, cluster.namespace, first.pvc_name)
            delete_volume(core, "dcloud-test-homeuse")
