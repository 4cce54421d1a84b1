"""The home volume and scratch claims when the cluster answers badly or slowly: what the user
reads (one sentence, a 400, never JupyterHub's 500) and what the API server receives.

- a WaitForFirstConsumer claim waiting for its node (a cluster autoscaler adding one) is the
  scheduler's wait, not a failed provisioner: its grace time is the admin's
  ``unschedulable_grace_seconds``;
- error answers of the API server, on reading or growing a claim, each a sentence;
- two starts growing one shared claim at once: the patch names the version it read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import aiohttp
import pytest
import yaml
from jupyterhub.spawner import SpawnException
from kubernetes_asyncio.client import ApiException

from dcloud_spawner.core.errors import Refusal
from dcloud_spawner.core.refusals import UNREACHABLE
from dcloud_spawner.kube import claims as claims_module
from dcloud_spawner.kube import home_volume
from dcloud_spawner.kube.attempt import StartAttempt, unschedulable
from tests.conftest import EXAMPLE_CATALOG
from tests.kube.test_home_volume import GI, Claims, plan, spawner_on

AGAIN = "so the server was not started; try again in a minute, and tell the administrators if it lasts."

# -- a claim waiting for its node is not a claim nothing provisions -------------------------------

AUTOSCALING = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


class WaitingPod:
    """A spawner whose pod waits for a node, its home claim Pending on the class ``mode``."""

    def __init__(self, annotations: dict, mode: str | None) -> None:
        self.namespace, self.pod_name, self.pvc_name = "dcloud", "jupyter-alice", "claim-alice"
        self.storage_pvc_ensure, self.storage_class = True, "gp-delayed"
        self.volume_pending_grace_seconds, self.unschedulable_grace_seconds = 1.0, 2.5
        self.k8s_api_request_timeout = 3
        self.events_enabled, self.event_reflector = True, object()
        self.events = [{"reason": "FailedScheduling", "message": AUTOSCALING}]
        pod = {"metadata": {"name": self.pod_name, "namespace": self.namespace}, "spec": {
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": self.pvc_name}}]}}
        self.pod_reflector = SimpleNamespace(pods={f"{self.namespace}/{self.pod_name}": pod})
        self.annotations, self.mode = annotations, mode
        self.api = self  # read_namespaced_persistent_volume_claim below; api_client for StorageV1Api
        self.api_client = None

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        return SimpleNamespace(status=SimpleNamespace(phase="Pending"),
                               metadata=SimpleNamespace(annotations=self.annotations),
                               spec=SimpleNamespace(storage_class_name=self.storage_class))


@pytest.fixture
def classes(monkeypatch):
    """StorageV1Api reading each class's volumeBindingMode from the spawner (None: forbidden)."""
    read: list[str] = []

    class Classes:
        def __init__(self, api_client):
            pass

        async def read_storage_class(self, name, **kwargs):
            read.append(name)
            if spawner_of[0].mode is None:
                raise ApiException(status=403, reason="Forbidden")
            return SimpleNamespace(volume_binding_mode=spawner_of[0].mode)

    spawner_of: list[WaitingPod] = []
    monkeypatch.setattr(claims_module, "StorageV1Api", Classes)
    monkeypatch.setattr(claims_module, "FIRST_READ_AFTER", 0.0)
    monkeypatch.setattr(claims_module, "READ_EVERY", 0.0)
    return spawner_of, read


async def ends_how(classes, annotations: dict, mode: str | None) -> tuple[Refusal, float]:
    spawner = WaitingPod(annotations, mode)
    classes[0].append(spawner)
    began = time.monotonic()
    refusal = await asyncio.wait_for(StartAttempt().doomed(spawner, None), 10)
    return refusal, time.monotonic() - began


async def test_a_claim_waiting_for_an_autoscaled_node_is_the_scheduler_s_wait_not_the_volume_s(classes):
    """WaitForFirstConsumer, no node chosen yet: the volume's 1 s does not end the start; the
    admin's unschedulable_grace_seconds (2.5 s here, raised for autoscaling) does, with its words."""
    refusal, took = await ends_how(classes, {}, "WaitForFirstConsumer")
    assert refusal.reason == "unschedulable" and took >= 2.5
    assert refusal.sentence == f"The cluster cannot place this server: {AUTOSCALING.split('. preemption:')[0]}."
    assert classes[1] == ["gp-delayed"]  # the class is read once per start, not at every look


@pytest.mark.parametrize("annotations, mode", [
    ({"volume.kubernetes.io/selected-node": "gpu-7"}, "WaitForFirstConsumer"),  # node chosen, provisioner asked
    ({}, "Immediate"),
    # the class cannot be read: the PV controller's word to the provisioner
    ({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}, None),
])
async def test_a_claim_its_provisioner_was_asked_for_ends_the_start_after_the_volume_s_grace(
        classes, annotations, mode):
    refusal, took = await ends_how(classes, annotations, mode)
    assert refusal.sentence == (
        "Home size: storage class 'gp-delayed' did not provision your home volume within 1 second, so the server "
        "was not started (its claim is kept for your next start); try again later, and tell the administrators if it "
        "lasts.")
    assert took < 2.5


async def test_a_class_that_cannot_be_read_leaves_a_claim_without_a_node_to_the_scheduler(classes):
    refusal, took = await ends_how(classes, {}, None)
    assert refusal.reason == "unschedulable" and took >= 2.5


def test_a_scratch_claim_the_ephemeral_volume_controller_has_not_made_yet_is_no_verdict():
    """Right after the pod is made the scheduler may say it waits for the scratch disk's claim;
    those words stay the last event while the volume is then provisioned: they end no start."""
    spawner = WaitingPod({}, "WaitForFirstConsumer")
    pod = spawner.pod_reflector.pods["dcloud/jupyter-alice"]
    spawner.events = [{"reason": "FailedScheduling", "message": (
        '0/8 nodes are available: waiting for ephemeral volume controller to create the persistentvolumeclaim '
        '"jupyter-alice-dcloud-scratch". not found. preemption: 0/8 nodes are available.')}]
    long_ago = time.monotonic() - 60
    assert unschedulable(spawner, pod, long_ago, None) == long_ago  # no refusal, however long it waits
    spawner.events.append({"reason": "FailedScheduling", "message": AUTOSCALING})
    refusal = unschedulable(spawner, pod, long_ago, None)
    assert isinstance(refusal, Refusal) and refusal.reason == "unschedulable"


async def test_what_the_installer_did_is_told_when_the_pod_runs_before_the_watch_s_next_look():
    """The installer's end and the notebook's start can come in one status: the start ends at
    once, yet the progress page still says what the installer did, once."""
    pod = {"metadata": {"name": "jupyter-alice"}, "spec": {"nodeName": "real-0"}, "status": {
        "phase": "Running",
        "initContainerStatuses": [{"name": "dcloud-packages", "state": {"terminated": {
            "exitCode": 0, "message": "reused 0123abcd"}}}]}}
    spawner = SimpleNamespace(
        namespace="dcloud", pod_name="jupyter-alice", dcloud_queue=lambda plan: None,
        volume_pending_grace_seconds=120.0, events_enabled=False, event_reflector=None,
        pod_reflector=SimpleNamespace(pods={"dcloud/jupyter-alice": pod}))
    reused = "Reusing your packages: tqdm, rich (built at an earlier start; pip did not run)"

    async def said(looks: float) -> list[str]:
        attempt = StartAttempt()
        watch = asyncio.ensure_future(attempt.doomed(spawner, SimpleNamespace(packages=["tqdm", "rich"])))
        await asyncio.sleep(looks)  # 0: the watch has not looked yet (its first look is 0.25 s in)
        attempt.started()
        watch.cancel()
        return [attempt.messages.get_nowait()["message"] for _ in range(attempt.messages.qsize())]

    assert await said(0) == [reused]
    assert await said(0.6) == [reused]  # told by the watch's look, not again at the end


# -- error answers of the API server: one sentence each ---------------------------------------------


@pytest.fixture
def expandable(monkeypatch):
    async def lookup(spawner, name):
        return name != "fixed"

    monkeypatch.setattr(home_volume, "_expandable", lookup)


@pytest.mark.usefixtures("expandable")
@pytest.mark.parametrize("where, error, sentence", [
    ("read", ApiException(status=500, reason="Internal Server Error"),
     f"Home size: the cluster answered HTTP 500 (Internal Server Error) to reading your home volume, {AGAIN}"),
    ("patch", ApiException(status=403, reason="Forbidden"),
     f"Home size: the cluster answered HTTP 403 (Forbidden) to growing your home volume to 8Gi, {AGAIN}"),
    ("reread", ApiException(status=503, reason="Service Unavailable"),
     "Home size: the cluster answered HTTP 503 (Service Unavailable) to reading your home volume as it grows to 8Gi, "
     f"{AGAIN}"),
    ("read", aiohttp.ClientConnectionError("refused"), UNREACHABLE),
    ("patch", asyncio.TimeoutError(), UNREACHABLE),
])
async def test_an_error_answer_while_growing_is_one_sentence(where, error, sentence):
    claims = Claims("5Gi")
    claims.fail[where] = error
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.sentence == sentence


@pytest.mark.usefixtures("expandable")
async def test_a_capacity_that_is_no_size_is_one_sentence():
    claims = Claims("5Gi", driver="never")
    claims.capacity = "lots"
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.sentence == (
        f"Home size: the cluster answered a size DCloud cannot read to reading your home volume as it grows to 8Gi, "
        f"{AGAIN}")


@pytest.mark.usefixtures("expandable")
async def test_marking_never_ends_a_start(caplog):
    """A site whose hub may not patch claims: its users' existing claims lack DCloud's marks, and
    their starts go on (group quotas miss the claim, and the log says so)."""
    claims = Claims("8Gi", marked={})
    claims.fail["patch"] = ApiException(status=403, reason="Forbidden")
    with caplog.at_level(logging.WARNING, logger="dcloud"):
        assert await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"]) is None
    assert [body for *_, body in claims.patches] == [{"metadata": home_volume.metadata(["students"])}]
    assert "could not mark the home volume claim-alice" in caplog.text


@pytest.mark.usefixtures("expandable")
async def test_an_unbound_claim_is_not_resized_and_the_user_is_told():
    """The API server refuses to resize a claim no volume is bound to (a WaitForFirstConsumer claim
    never used by a pod): nothing is sent, the user reads how to get there."""
    claims = Claims("5Gi", phase="Pending", marked={})
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.field == "home" and err.value.sentence == (
        "Home size: your home volume is 5Gi and has no disk bound to it yet, and Kubernetes grows only bound volumes, "
        "so nothing was changed; start with 5Gi (which binds it), then ask for 8Gi.")
    assert claims.patches == []
    assert await home_volume.grow(spawner_on(claims), plan(5 * GI), 50 * GI, ["students"]) is None  # as it is: starts


async def test_a_storage_class_the_api_server_fails_to_read_is_one_sentence(monkeypatch):
    class Classes:
        def __init__(self, api_client):
            pass

        async def read_storage_class(self, name, **kwargs):
            raise ApiException(status=500, reason="Internal Server Error")

    monkeypatch.setattr(claims_module, "StorageV1Api", Classes)
    spawner = SimpleNamespace(api=SimpleNamespace(api_client=None), k8s_api_request_timeout=3)
    with pytest.raises(Refusal) as err:
        await claims_module.require_class(spawner, "scratch", "fast")
    assert err.value.sentence == (
        f"Scratch size: the cluster answered HTTP 500 (Internal Server Error) to reading the storage class 'fast', "
        f"{AGAIN}")


@pytest.fixture
def storage_catalog(tmp_path):
    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    data["storage"] = {"home": {"storage_class": "standard", "min": "1Gi", "default": "5Gi", "max": "50Gi"}}
    data["quotas"] = {"groups": {"students": {"max_home": "20Gi"}}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Failing(Claims):
    """A claim API whose every call answers ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__("5Gi")
        self.error = error
        self.api_client = None

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        raise self.error

    async def list_namespaced_persistent_volume_claim(self, namespace, **kwargs):
        raise self.error


@pytest.mark.usefixtures("offline_kubeconfig")
@pytest.mark.parametrize("groups", [["students"], ["researchers"]])  # listed for a group quota; read alone
async def test_a_rest_start_the_api_server_fails_is_a_400_with_a_sentence(storage_catalog, groups):
    from tests.support.spawners import make_spawner

    spawner = make_spawner(groups, catalog_path=storage_catalog, storage_pvc_ensure=True)
    spawner.api = Failing(ApiException(status=403, reason="Forbidden"))
    with pytest.raises(SpawnException) as err:
        await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "6Gi"})
    assert err.value.status_code == 400 and err.value.jupyterhub_message == (
        f"Home size: the cluster answered HTTP 403 (Forbidden) to reading the home volumes, {AGAIN}")


@pytest.mark.usefixtures("offline_kubeconfig", "expandable")
async def test_a_start_whose_growth_the_api_server_refuses_is_a_400_with_a_sentence(storage_catalog):
    from tests.support.spawners import make_spawner

    spawner = make_spawner(["researchers"], catalog_path=storage_catalog, storage_pvc_ensure=True)
    spawner.api = Claims("5Gi")
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "8Gi"})
    spawner.api.fail["patch"] = ApiException(status=500, reason="Internal Server Error")
    with pytest.raises(SpawnException) as err:
        await spawner.load_user_options()  # KubeSpawner's start calls it before the claim and the pod
    assert err.value.status_code == 400 and err.value.jupyterhub_message == (
        f"Home size: the cluster answered HTTP 500 (Internal Server Error) to growing your home volume to 8Gi, {AGAIN}")


# -- two starts growing one shared claim ------------------------------------------------------------


@pytest.mark.usefixtures("expandable")
async def test_a_grow_raced_by_another_reads_again_and_patches_the_version_it_read():
    """Two servers of one user on one claim (no {servername} in the claim's name): the other grows it
    to 8Gi between this start's read and its patch to 10Gi. The API server refuses the stale patch
    (409); the start reads again and grows from 8Gi."""
    claims = Claims("5Gi")

    def other_start(api: Claims) -> None:
        api.size = api.capacity = "8Gi"
        api.version += 1

    claims.meanwhile.append(other_start)
    said = await home_volume.grow(spawner_on(claims), plan(10 * GI), 50 * GI, ["students"])
    assert said == "Growing your home volume from 8Gi to 10Gi"
    assert [body["metadata"]["resourceVersion"] for *_, body in claims.patches] == ["1", "2"]
    assert claims.size == "10Gi"


@pytest.mark.usefixtures("expandable")
async def test_a_smaller_grow_raced_by_a_larger_is_told_as_the_volume_only_growing():
    claims = Claims("5Gi")

    def other_start(api: Claims) -> None:
        api.size = api.capacity = "10Gi"
        api.version += 1

    claims.meanwhile.append(other_start)
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.sentence.startswith("Home size 8Gi is smaller than your home volume, which is 10Gi")
    assert claims.size == "10Gi"


@pytest.mark.usefixtures("expandable")
async def test_a_claim_that_keeps_changing_is_one_sentence_after_a_few_tries():
    claims = Claims("5Gi")

    def touched(api: Claims) -> None:
        api.version += 1

    claims.meanwhile += [touched] * 10
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.sentence == (
        f"Home size: the cluster answered HTTP 409 (Conflict) to growing your home volume to 8Gi, {AGAIN}")
    assert len(claims.patches) == home_volume.CONFLICT_TRIES


# -- every call bounded in time ----------------------------------------------------------------------


async def test_every_call_of_a_grow_is_bounded_by_the_spawner_s_timeout(monkeypatch):
    asked: list = []

    class Classes:
        def __init__(self, api_client):
            pass

        async def read_storage_class(self, name, **kwargs):
            asked.append(kwargs.get("_request_timeout"))
            return SimpleNamespace(allow_volume_expansion=True)

    monkeypatch.setattr(home_volume, "StorageV1Api", Classes)
    claims = Claims("5Gi", driver="node")
    claims.api_client = None
    await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert claims.timeouts == [3, 3, 3] and asked == [3]  # read, patch, read as it grows; the class
