"""The home volume before the pod: grow only, never shrink, never where the class cannot
expand; marked with its owner's groups for the group quotas; its size and use for the form.
The Kubernetes API is stood in for here (an unbound claim cannot be resized, and the test
cluster has no storage provisioner: see the README); tests/kube/test_storage_cluster.py runs
the same code against the test cluster."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client import ApiException

from dcloud_spawner.core.errors import Refusal
from dcloud_spawner.kube import claims as claims_module
from dcloud_spawner.kube import home_volume, volume_stats

GI = 1024**3
MARKED = {"labels": {"dcloud.io/volume": "home"}, "annotations": {"dcloud.io/groups": '["students"]'}}


class Claims:
    """The calls home_volume makes on KubeSpawner's client, on one claim (or none)."""

    def __init__(self, size: str | None, storage_class: str | None = "standard", marked: dict | None = None,
                 driver: str = "grows") -> None:
        self.size, self.storage_class, self.patches = size, storage_class, []
        self.marked = marked if marked is not None else MARKED
        # the storage driver after a resize request: "grows" the volume at once, leaves the
        # file system to the "node", or "never" gets to it
        self.capacity, self.driver, self.conditions, self.reads = size, driver, [], 0

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        if self.size is None:
            raise ApiException(status=404)
        spec = SimpleNamespace(
            resources=SimpleNamespace(requests={"storage": self.size}), storage_class_name=self.storage_class
        )
        meta = SimpleNamespace(name=name, labels=self.marked.get("labels"), annotations=self.marked.get("annotations"))
        self.reads += 1
        status = SimpleNamespace(capacity={"storage": self.capacity}, conditions=self.conditions)
        return SimpleNamespace(metadata=meta, spec=spec, status=status)

    async def patch_namespaced_persistent_volume_claim(self, name, namespace, body):
        self.patches.append((name, namespace, body))
        wanted = body.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
        if wanted:
            self.size = wanted
            if self.driver == "grows":
                self.capacity = wanted
            elif self.driver == "node":
                self.conditions = [SimpleNamespace(type="FileSystemResizePending")]


def spawner_on(claims: Claims, ensure: bool = True, storage_class: str = "standard"):
    return SimpleNamespace(
        api=claims,
        storage_pvc_ensure=ensure,
        pvc_name="claim-alice",
        namespace="dcloud",
        storage_class=storage_class,
        k8s_api_request_timeout=3,
        home_resize_wait_seconds=5,
    )


def plan(home: int | None):
    return SimpleNamespace(home_bytes=home)


@pytest.fixture
def expandable(monkeypatch):
    classes = {"standard": True, "fixed": False}

    async def lookup(spawner, name):
        return classes.get(name, False)

    monkeypatch.setattr(home_volume, "_expandable", lookup)


@pytest.mark.usefixtures("expandable")
async def test_a_larger_size_patches_the_claim():
    claims = Claims("5Gi")
    said = await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert said == "Growing your home volume from 5Gi to 8Gi"
    assert claims.patches == [("claim-alice", "dcloud", {"spec": {"resources": {"requests": {"storage": "8Gi"}}}})]


@pytest.mark.usefixtures("expandable")
async def test_the_same_size_or_no_claim_yet_changes_nothing():
    for claims in (Claims("8Gi"), Claims(None)):
        assert await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"]) is None
        assert claims.patches == []
    assert await home_volume.grow(spawner_on(Claims("5Gi"), ensure=False), plan(8 * GI), None, []) is None


@pytest.mark.usefixtures("expandable")
async def test_a_claim_is_marked_with_its_owner_s_groups_where_they_differ():
    claims = Claims("8Gi", marked={"labels": {"app": "jupyterhub"}, "annotations": {}})
    assert await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students", "physics"]) is None
    assert claims.patches == [
        (
            "claim-alice",
            "dcloud",
            {
                "metadata": {
                    "labels": {"dcloud.io/volume": "home"},
                    "annotations": {"dcloud.io/groups": '["physics", "students"]'},
                }
            },
        )
    ]
    grown = Claims("5Gi", marked={})  # grown and marked in one patch
    await home_volume.grow(spawner_on(grown), plan(8 * GI), 50 * GI, ["students"])
    assert [body for *_, body in grown.patches] == [
        {"metadata": MARKED, "spec": {"resources": {"requests": {"storage": "8Gi"}}}}
    ]


@pytest.mark.usefixtures("expandable")
async def test_a_smaller_size_is_refused_and_nothing_changes():
    claims = Claims("10Gi", marked={})
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(4 * GI), 50 * GI, ["students"])
    assert err.value.field == "home" and err.value.sentence == (
        "Home size 4Gi is smaller than your home volume, which is 10Gi and only grows; ask for 10Gi or more "
        "(up to 50Gi)."
    )
    assert claims.patches == []


@pytest.mark.usefixtures("expandable")
async def test_a_class_that_cannot_expand_is_refused_and_nothing_changes():
    claims = Claims("5Gi", storage_class="fixed", marked={})
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
    assert err.value.sentence.startswith("Home size: your home volume is 5Gi and storage class 'fixed' cannot grow")
    assert claims.patches == []


async def test_a_class_the_cluster_lacks_is_refused_naming_the_field(monkeypatch):
    looked_up = []

    class Classes:
        def __init__(self, api_client):
            pass

        async def read_storage_class(self, name):
            looked_up.append(name)
            if name != "standard":
                raise ApiException(status=403 if name == "secret" else 404)

    monkeypatch.setattr(claims_module, "StorageV1Api", Classes)
    spawner = SimpleNamespace(api=SimpleNamespace(api_client=None))
    with pytest.raises(Refusal) as err:
        await claims_module.require_class(spawner, "home", "gone")
    assert err.value.field == "home" and err.value.sentence == (
        "Home size: the storage class 'gone' that your home volume is made on does not exist on this cluster, so "
        "nothing was created; tell the administrators (catalog storage.home.storage_class)."
    )
    with pytest.raises(Refusal) as err:
        await claims_module.require_class(spawner, "scratch", "gone\nnow")
    assert err.value.field == "scratch" and err.value.sentence.startswith(
        "Scratch size: the storage class 'gone\\nnow' that your scratch disk is made on does not exist"
    )
    for name in ("standard", "secret", None):  # exists; not allowed to know; the default class
        await claims_module.require_class(spawner, "home", name)
    assert looked_up == ["gone", "gone\nnow", "standard", "secret"]


@pytest.mark.parametrize(
    "annotation, groups",
    [
        ('["b", "a"]', ("a", "b")),
        ("not json", ()),
        ('{"a": 1}', ()),
        ('["a", 1]', ()),
        (json.dumps(["g"] * 101), ()),
        (None, ()),
    ],
)
def test_a_claim_s_groups_are_read_as_untrusted(annotation, groups):
    meta = SimpleNamespace(name="claim-x", annotations={"dcloud.io/groups": annotation} if annotation else None)
    spec = SimpleNamespace(resources=SimpleNamespace(requests={"storage": "3Gi"}))
    assert home_volume.volume_of(meta, spec) == home_volume.HomeVolume("claim-x", groups, 3 * GI)
    spec.resources.requests = {"storage": "lots"}
    assert home_volume.volume_of(meta, spec) is None


# -- the form: size and use ------------------------------------------------------------------


def running_pod(name: str, claim: str, node: str = "real-0", phase: str = "Running", namespace: str = "dcloud"):
    return {
        "metadata": {"name": name, "namespace": namespace},
        "status": {"phase": phase},
        "spec": {"nodeName": node, "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}]},
    }


def test_only_a_running_pod_that_mounts_the_claim_has_a_node():
    pods = [
        running_pod("a", "claim-bob"),
        running_pod("b", "claim-alice", phase="Pending"),
        running_pod("c", "claim-alice", namespace="other"),
        running_pod("d", "claim-alice", node="t4-0"),
    ]
    assert volume_stats.node_mounting(pods, "dcloud", "claim-alice") == "t4-0"
    assert volume_stats.node_mounting(pods[:3], "dcloud", "claim-alice") is None


def test_the_kubelet_summary_is_read_as_untrusted():
    summary = {
        "pods": [
            {
                "volume": [
                    {"name": "home", "usedBytes": 5 * GI, "pvcRef": {"name": "claim-alice", "namespace": "dcloud"}},
                    {"name": "tmp", "usedBytes": 7},
                ]
            },
            {
                "volume": [
                    {"usedBytes": -1, "pvcRef": {"name": "claim-bob", "namespace": "dcloud"}},
                    {"usedBytes": True, "pvcRef": {"name": "claim-eve", "namespace": "dcloud"}},
                    {"usedBytes": "9", "pvcRef": {"name": "claim-kim", "namespace": "dcloud"}},
                ]
            },
            "junk",
            {"volume": "junk"},
        ]
    }
    assert volume_stats.volume_usage(summary) == {("dcloud", "claim-alice"): 5 * GI}
    assert volume_stats.volume_usage([]) == {} and volume_stats.volume_usage({"pods": {}}) == {}


def node(addresses, port=None):
    endpoint = SimpleNamespace(kubelet_endpoint=SimpleNamespace(port=port)) if port else None
    return SimpleNamespace(
        status=SimpleNamespace(
            addresses=[SimpleNamespace(type=t, address=a) for t, a in addresses], daemon_endpoints=endpoint
        )
    )


def test_the_kubelet_is_found_at_its_node_s_address_and_port():
    assert volume_stats.kubelet_url(node([("Hostname", "n1"), ("InternalIP", "10.0.0.5")], 50967)) == (
        "https://10.0.0.5:50967/stats/summary"
    )
    assert volume_stats.kubelet_url(node([("InternalIP", "fd00::5")])) == "https://[fd00::5]:10250/stats/summary"
    assert volume_stats.kubelet_url(node([])) is None


class Kubelet:
    """A CoreV1Api whose node's kubelet answers the summary (or fails), counting its requests."""

    def __init__(self, summary=None, error: Exception | None = None) -> None:
        self.summary, self.error, self.requests = summary, error, []
        configuration = SimpleNamespace(auth_settings=self._auth)
        self.api_client = SimpleNamespace(configuration=configuration, rest_client=SimpleNamespace(GET=self._get))

    @staticmethod
    async def _auth():
        return {"BearerToken": {"value": "Bearer hub-token"}}

    async def read_node(self, name, **kwargs):
        self.requests.append(f"node/{name}")
        return node([("InternalIP", "10.0.0.5")], 50967)

    async def _get(self, url, headers, _request_timeout):
        self.requests.append((url, headers["Authorization"]))
        if self.error is not None:
            raise self.error
        return SimpleNamespace(data=json.dumps(self.summary).encode())


async def test_a_node_s_summary_is_read_once_per_while_with_the_hub_s_token():
    kubelet = Kubelet({"pods": [{"volume": [{"usedBytes": 3 * GI, "pvcRef": {"name": "c", "namespace": "n"}}]}]})
    stats = volume_stats.KubeletStats()
    assert await stats.used(kubelet, "real-0", "n", "c", 2) == 3 * GI
    assert await stats.used(kubelet, "real-0", "n", "other", 2) is None
    assert kubelet.requests == ["node/real-0", ("https://10.0.0.5:50967/stats/summary", "Bearer hub-token")]
    failing = Kubelet(error=ApiException(status=403, reason="Forbidden"))
    assert await stats.used(failing, "t4-0", "n", "c", 2) is None
    assert await stats.used(failing, "t4-0", "n", "c", 2) is None
    assert len(failing.requests) == 2  # a failing kubelet is not asked again at every form


@pytest.fixture
def home_catalog(tmp_path):
    import yaml

    from tests.conftest import EXAMPLE_CATALOG

    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    data["storage"] = {"home": {"storage_class": "standard", "min": "1Gi", "default": "5Gi", "max": "50Gi"}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_the_form_shows_the_size_and_waits_for_the_cluster_only_a_moment(home_catalog, monkeypatch):
    import asyncio
    import time

    from dcloud_spawner.kube import spawner as kube_spawner
    from tests.support.spawners import make_spawner

    monkeypatch.setattr(kube_spawner, "FORM_READ_SECONDS", 0.3)
    spawner = make_spawner(["students"], catalog_path=home_catalog, storage_pvc_ensure=True)
    spawner.api = Claims("6Gi")
    html = await spawner.get_options_form()
    assert "6Gi to 50Gi" in html and "Your home volume is 6Gi now; it only grows." in html

    class Silent(Claims):
        async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
            await asyncio.sleep(60)

    spawner.api = Silent("6Gi")
    began = time.monotonic()
    html = await spawner.get_options_form()
    assert time.monotonic() - began < 2  # the form, without the size
    assert "1Gi to 50Gi" in html and "Your home volume is" not in html


@pytest.mark.usefixtures("expandable")
async def test_growth_waits_for_the_driver_before_the_pod(monkeypatch):
    """The pod must not mount a volume the driver is still growing (offline drivers cannot
    finish under a pod): the start reads the claim until its capacity is there, or only the
    node's file-system step is left."""
    for driver in ("grows", "node"):
        claims = Claims("5Gi", driver=driver)
        said = await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI, ["students"])
        assert said == "Growing your home volume from 5Gi to 8Gi"
        assert claims.reads == 2  # before the patch, then once after it


@pytest.mark.usefixtures("expandable")
async def test_a_driver_that_does_not_finish_in_time_is_said_and_the_start_goes_on(monkeypatch):
    monkeypatch.setattr(home_volume, "RESIZE_POLL", 0.01)
    claims = Claims("5Gi", driver="never")
    spawner = spawner_on(claims)
    spawner.home_resize_wait_seconds = 0.05
    said = await home_volume.grow(spawner, plan(8 * GI), 50 * GI, ["students"])
    assert said.startswith("Growing your home volume from 5Gi to 8Gi; the storage driver has not finished yet")
    assert claims.reads > 2  # it kept looking until the bound
    assert claims.patches[-1][2]["spec"] == {"resources": {"requests": {"storage": "8Gi"}}}


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_the_use_read_at_stop_is_shown_on_the_next_form_and_kept_across_restarts(home_catalog, monkeypatch):
    """A stopped server's form has no running pod to read the use from: the stop reads it once
    (afresh, not from the forms' cache), keeps it in the spawner's state, and the form says when."""
    from dcloud_spawner.hub.state import hub_state
    from tests.support.spawners import make_spawner

    spawner = make_spawner(["students"], catalog_path=home_catalog, storage_pvc_ensure=True)
    pod = {"metadata": {"namespace": spawner.namespace, "name": spawner.pod_name},
           "spec": {"nodeName": "real-0", "volumes": [{"persistentVolumeClaim": {"claimName": spawner.pvc_name}}]},
           "status": {"phase": "Running"}}
    watched = {"x": pod}
    monkeypatch.setattr(type(spawner), "pod_reflector", property(lambda self: SimpleNamespace(pods=watched)))
    kubelet = Kubelet({"pods": [{"volume": [{"usedBytes": 2 * GI,
                                             "pvcRef": {"name": spawner.pvc_name, "namespace": spawner.namespace}}]}]})
    stats = hub_state().part(volume_stats.KubeletStats, volume_stats.KubeletStats)
    await stats.used(kubelet, "real-0", spawner.namespace, spawner.pvc_name, 2)  # a form's reading, cached
    kubelet.summary["pods"][0]["volume"][0]["usedBytes"] = 3 * GI  # written since
    spawner.api = kubelet
    await spawner._note_home_use()
    assert spawner.dcloud_home_used[0] == 3 * GI

    state = spawner.get_state()
    again = make_spawner(["students"], catalog_path=home_catalog, storage_pvc_ensure=True)
    again.load_state(state)
    again.api = Claims("6Gi")
    watched.clear()  # no server running now
    html = await again.get_options_form()
    assert "Your home volume is 6Gi now, 3Gi used when your server stopped (" in html, html

    again.load_state({"dcloud_home_used": ["<script>", 1]})  # state is the hub's, but read strictly
    assert again.dcloud_home_used[0] == 3 * GI
