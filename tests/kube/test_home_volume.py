"""The home volume before the pod: grow only, never shrink, never where the class cannot
expand; marked with its owner's groups for the group quotas; its size and use for the form.
The Kubernetes API is stood in for here, so that each storage driver's way (growing at once,
leaving the file system to the node, never finishing) and each answer can be had on demand;
tests/kube/test_storage_cluster.py runs the same code against the test cluster, and
tests/browser/test_storage_real.py grows a real volume of its default class (dcloud-local, on
real-0) through the form."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client import ApiException

from dcloud_spawner.core.errors import Refusal
from dcloud_spawner.core.quantity import memory_bytes
from dcloud_spawner.kube import claims as claims_module
from dcloud_spawner.kube import home_volume, volume_stats

GI = 1024**3
MARKED = {"labels": {"dcloud.io/volume": "home"}, "annotations": {"dcloud.io/groups": '["students"]'}}


class Claims:
    """The calls home_volume makes on KubeSpawner's client, on one claim (or none), with the API
    server's rules: a patch naming a resourceVersion applies to that version only (409), a claim
    never shrinks and grows only when bound (422)."""

    def __init__(self, size: str | None, storage_class: str | None = "standard", marked: dict | None = None,
                 driver: str = "grows", phase: str = "Bound") -> None:
        self.size, self.storage_class, self.patches = size, storage_class, []
        self.marked = marked if marked is not None else MARKED
        # the storage driver after a resize request: "grows" the volume at once, leaves the
        # file system to the "node", or "never" gets to it
        self.capacity, self.driver, self.conditions, self.reads = size, driver, [], 0
        self.phase, self.version = phase, 1
        self.timeouts: list = []  # the _request_timeout of each call
        self.fail: dict[str, Exception] = {}  # "read", "patch", or "reread" (a read after a patch): raised
        self.meanwhile: list = []  # calls of another start's, each made just before one of this start's patches

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        self.timeouts.append(kwargs.get("_request_timeout"))
        failure = self.fail.get("reread" if self.version > 1 else "read") or self.fail.get("read")
        if failure is not None:
            raise failure
        if self.size is None:
            raise ApiException(status=404)
        spec = SimpleNamespace(
            resources=SimpleNamespace(requests={"storage": self.size}), storage_class_name=self.storage_class
        )
        meta = SimpleNamespace(name=name, labels=self.marked.get("labels"), annotations=self.marked.get("annotations"),
                               resource_version=str(self.version))
        self.reads += 1
        status = SimpleNamespace(phase=self.phase, capacity={"storage": self.capacity}, conditions=self.conditions)
        return SimpleNamespace(metadata=meta, spec=spec, status=status)

    async def patch_namespaced_persistent_volume_claim(self, name, namespace, body, **kwargs):
        if self.meanwhile:
            self.meanwhile.pop(0)(self)
        self.timeouts.append(kwargs.get("_request_timeout"))
        self.patches.append((name, namespace, body))
        if "patch" in self.fail:
            raise self.fail["patch"]
        version = body.get("metadata", {}).get("resourceVersion")
        if version is not None and version != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        wanted = body.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
        if wanted and (self.phase != "Bound" or memory_bytes(wanted) < memory_bytes(self.size)):
            raise ApiException(status=422, reason="Unprocessable Entity")
        self.version += 1
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


def plan(home: int | None, defaulted: bool = False):
    return SimpleNamespace(home_bytes=home, home_defaulted=defaulted)


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
    assert claims.patches == [("claim-alice", "dcloud", {"metadata": {"resourceVersion": "1"},
                                                         "spec": {"resources": {"requests": {"storage": "8Gi"}}}})]


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
        {"metadata": {**MARKED, "resourceVersion": "1"}, "spec": {"resources": {"requests": {"storage": "8Gi"}}}}
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

        async def read_storage_class(self, name, **kwargs):
            looked_up.append(name)
            assert kwargs == {"_request_timeout": 3}
            if name != "standard":
                raise ApiException(status=403 if name == "secret" else 404)

    monkeypatch.setattr(claims_module, "StorageV1Api", Classes)
    spawner = SimpleNamespace(api=SimpleNamespace(api_client=None), k8s_api_request_timeout=3)
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
    assert home_volume.volume_of(meta, spec, "dcloud") == home_volume.HomeVolume("dcloud", "claim-x", groups, 3 * GI)
    spec.resources.requests = {"storage": "lots"}
    assert home_volume.volume_of(meta, spec, "dcloud") is None


# -- group quotas: the claims that count, labelled or not ------------------------------------


def pvc(name: str, size: str, labels: dict, annotations: dict) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, labels=labels, annotations=annotations),
                           spec=SimpleNamespace(resources=SimpleNamespace(requests={"storage": size}),
                                                storage_class_name="old-class"))


KUBESPAWNER = {"component": "singleuser-storage", "hub.jupyter.org/username": "x"}  # its labels on a claim
DCLOUD = {**KUBESPAWNER, "dcloud.io/volume": "home"}


class Namespace:
    """The claims of one namespace, as KubeSpawner's client lists and reads them."""

    def __init__(self, *claims: SimpleNamespace) -> None:
        self.claims = {c.metadata.name: c for c in claims}
        self.selectors: list[str] = []
        self.api_client = None

    async def list_namespaced_persistent_volume_claim(self, namespace, label_selector, **kwargs):
        self.selectors.append(label_selector)
        key, value = label_selector.split("=")
        return SimpleNamespace(items=[c for c in self.claims.values() if (c.metadata.labels or {}).get(key) == value])

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        if name not in self.claims:
            raise ApiException(status=404)
        return self.claims[name]


async def test_claims_made_before_dcloud_marked_them_count_for_their_owner_s_groups():
    api = Namespace(
        pvc("claim-sam", "8Gi", DCLOUD, {"dcloud.io/groups": '["students"]', "hub.jupyter.org/username": "sam"}),
        pvc("claim-kim", "6Gi", KUBESPAWNER, {"hub.jupyter.org/username": "kim"}),  # before the upgrade
        pvc("claim-eve", "5Gi", DCLOUD, {"dcloud.io/groups": json.dumps(["g"] * 101),
                                         "hub.jupyter.org/username": "eve"}),  # unreadable: eve's groups
        pvc("claim-old", "4Gi", KUBESPAWNER, {}),  # no owner named on it: no groups known
        pvc("hub-db-dir", "1Gi", {"component": "hub"}, {}),
    )
    spawner = SimpleNamespace(api=api, namespace="dcloud", k8s_api_request_timeout=3)
    asked: list[set[str]] = []

    def groups_of(names: set[str]) -> dict[str, list[str]]:
        asked.append(names)
        return {"kim": ["students"], "eve": ["students"]}

    found = {v.name: (v.groups, v.size // GI) for v in await home_volume.listed(spawner, groups_of)}
    assert found == {"claim-sam": (("students",), 8), "claim-kim": (("students",), 6),
                     "claim-eve": (("students",), 5), "claim-old": ((), 4)}
    assert sorted(api.selectors) == ["component=singleuser-storage", "dcloud.io/volume=home"]
    assert asked == [{"kim", "eve"}]  # one question for all of them


@pytest.fixture
def quota_catalog(tmp_path):
    import yaml

    from tests.conftest import EXAMPLE_CATALOG

    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    data["storage"] = {"home": {"storage_class": "renamed", "min": "1Gi", "default": "5Gi", "max": "50Gi"}}
    data["quotas"] = {"groups": {"students": {"max_home": "20Gi"}}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def hub_database():
    """JupyterHub's database, with kim in students (her claim predates DCloud's marks)."""
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    students = orm.Group(name="students")
    db.add_all([students, orm.Group(name="physics")])
    for name in ("ann", "bo", "kim"):
        db.add(orm.User(name=name))
    db.commit()
    students.users.append(orm.User.find(db, "kim"))
    db.commit()
    yield db
    db.close()


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_after_an_upgrade_unlabelled_claims_count_and_a_start_that_does_not_grow_is_let_through(
    quota_catalog, hub_database, monkeypatch
):
    """Claims KubeSpawner made before DCloud labelled them: the owner's is read directly (its
    size; no class check for a claim that exists, though the catalog's class was renamed), and
    the others count for their owners' groups as the hub's database has them."""
    from dcloud_spawner.hub.mixin import SpawnRefused
    from tests.support.spawners import make_spawner

    looked_up: list[str] = []
    missing = {"renamed"}  # the catalog's class, renamed since ann's claim was made

    class Classes:
        def __init__(self, api_client):
            pass

        async def read_storage_class(self, name, **kwargs):
            looked_up.append(name)
            if name in missing:
                raise ApiException(status=404)

    monkeypatch.setattr(claims_module, "StorageV1Api", Classes)
    api = Namespace(pvc("claim-ann", "12Gi", KUBESPAWNER, {"hub.jupyter.org/username": "ann"}),
                    pvc("claim-kim", "10Gi", KUBESPAWNER, {"hub.jupyter.org/username": "kim"}))
    ann = make_spawner(["students"], name="ann", catalog_path=quota_catalog, storage_pvc_ensure=True)
    ann.api, ann.user.db = api, hub_database
    await ann.dcloud_apply_user_options(ann, {"environment": "scipy", "home": "12Gi"})  # 12 + 10 > 20, not grown
    assert ann.dcloud_plan.home_bytes == 12 * GI and looked_up == []

    missing.clear()  # bo's new claim is made on it
    bo = make_spawner(["students"], name="bo", catalog_path=quota_catalog, storage_pvc_ensure=True)
    bo.api, bo.user.db = api, hub_database
    with pytest.raises(SpawnRefused) as err:
        await bo.dcloud_apply_user_options(bo, {"environment": "scipy", "home": "1Gi"})
    assert err.value.jupyterhub_message == (
        "Home size 1Gi would take group 'students' past its 20Gi of home volumes, since its other members already "
        "hold 22Gi; there is no room for a new one, so ask the administrators for more.")


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_a_claim_is_marked_only_with_the_groups_that_have_a_max_home(quota_catalog):
    """The claim Kubernetes receives names the owner's groups with a max_home, not all of them."""
    from tests.support.spawners import make_spawner

    spawner = make_spawner(["physics", "students", "zz-private"], catalog_path=quota_catalog,
                           storage_pvc_ensure=True)
    spawner.api = Claims(None)
    spawner.dcloud_plan = spawner.validate_options({"environment": "scipy", "home": "3Gi"})
    await spawner.load_user_options()
    claim = spawner.get_pvc_manifest()
    assert claim.metadata.labels["dcloud.io/volume"] == "home"
    assert claim.metadata.annotations["dcloud.io/groups"] == '["students"]'
    existing = Claims("3Gi", marked={"labels": {}, "annotations": {"dcloud.io/groups": '["physics", "students"]'}})
    spawner.api = existing
    await spawner.load_user_options()
    assert [body["metadata"]["annotations"] for *_, body in existing.patches] == [{"dcloud.io/groups": '["students"]'}]


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_with_user_namespaces_max_home_is_said_not_to_be_enforced(quota_catalog):
    from traitlets.config import Config

    from dcloud_spawner.kube import DCloudSpawner
    from tests.support.spawners import make_spawner

    spawner = make_spawner(["students"], catalog_path=quota_catalog, storage_pvc_ensure=True,
                           enable_user_namespaces=True)
    sentence = ("KubeSpawner.enable_user_namespaces is set, so each user's home volume is in their own namespace, "
                "where the hub does not list claims: the catalog's quotas.groups.<g>.max_home is not enforced (each "
                "user's own max_home still is).")
    assert sentence in spawner.config_problems()
    cfg = Config()
    cfg.KubeSpawner.enable_user_namespaces = True
    assert DCloudSpawner.config_problems_of(cfg) == [sentence]  # the hub's start and `dcloud check`

    class Unlisted(Namespace):
        async def list_namespaced_persistent_volume_claim(self, *args, **kwargs):
            raise AssertionError("one namespace's claims are not the group's")

    spawner.api = Unlisted(pvc(spawner.pvc_name, "30Gi", DCLOUD, {"dcloud.io/groups": '["students"]'}))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "40Gi"})
    assert spawner.dcloud_plan.home_bytes == 40 * GI


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
