"""Storage as a resource: the catalog's home and scratch sizes, per group, in the one gate,
the quotas and the form (the Kubernetes and local wiring are tested with their backends)."""

from __future__ import annotations

import pytest

from dcloud_spawner.core import quotas as quota
from dcloud_spawner.core.catalog import Catalog, CatalogError
from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.core.request import json_schema
from dcloud_spawner.core.validation import validate
from dcloud_spawner.hub.form import FormContext, render_form, request_from_form

STORAGE = {
    "home": {"storage_class": "standard", "min": "1Gi", "default": "5Gi", "max": "50Gi"},
    "scratch": {"min": "1Gi", "default": "2Gi", "max": "100Gi"},
    "ephemeral": {"request": "1Gi", "limit": "5Gi"},
}


@pytest.fixture
def with_storage(catalog_data) -> Catalog:
    data = dict(catalog_data)
    data["storage"] = STORAGE
    policies = data["policies"]
    policies["groups"]["students"] = {**policies["groups"]["students"], "max_home": "10Gi", "max_scratch": "4Gi",
                                      "totals": {**policies["groups"]["students"]["totals"], "max_scratch": "6Gi"}}
    # a total no policy of the user's names is no limit: everyone's totals name one too
    policies["everyone"] = {**policies["everyone"], "totals": {**policies["everyone"]["totals"], "max_scratch": "2Gi"}}
    data["quotas"] = {"groups": {**data.get("quotas", {}).get("groups", {}), "students": {"max_scratch": "8Gi"}}}
    return Catalog.from_data(data)


def test_sizes_are_chosen_within_the_groups_limits(with_storage):
    plan = validate({"home": "8Gi", "scratch": "3Gi"}, with_storage, ["students"])
    assert (plan.home_bytes, plan.scratch_bytes) == (8 * 1024**3, 3 * 1024**3)
    assert plan.user_options()["home"] == "8Gi" and plan.user_options()["scratch"] == "3Gi"
    assert plan.environment_variables()["DCLOUD_SCRATCH_SIZE"] == "3Gi"
    defaults = validate({}, with_storage, ["students"])
    assert (defaults.home_bytes, defaults.scratch_bytes) == (5 * 1024**3, 2 * 1024**3)
    # researchers have no max of their own: the catalog's maximum
    assert validate({"home": "50Gi"}, with_storage, ["researchers"]).home_bytes == 50 * 1024**3


@pytest.mark.parametrize("options, field, sentence", [
    ({"home": "11Gi"}, "home", "Home size must be between 1Gi and 10Gi for you."),
    ({"scratch": "512Mi"}, "scratch", "Scratch size must be between 1Gi and 4Gi for you."),
    ({"scratch": "lots"}, "scratch", "Scratch size 'lots' is not a quantity such as 20Gi or 512Mi."),
    ({"home": True}, "home", None),
    ({"home": "-1Gi"}, "home", None),
])
def test_bad_sizes_are_one_sentence_naming_the_field(with_storage, options, field, sentence):
    with pytest.raises(RequestError) as err:
        validate(options, with_storage, ["students"])
    assert err.value.field == field
    if sentence:
        assert err.value.sentence == sentence
    assert "\n" not in err.value.sentence


def test_without_storage_in_the_catalog_sizes_are_refused(catalog):
    with pytest.raises(RequestError) as err:
        validate({"scratch": "2Gi"}, catalog, ["students"])
    assert err.value.sentence == "Scratch size is not a choice on this hub; leave it out."
    plan = validate({}, catalog, ["students"])
    assert plan.home_bytes is None and "home" not in plan.user_options()


def test_catalog_storage_is_checked(catalog_data):
    data = dict(catalog_data, storage={"home": {"min": "10Gi", "default": "5Gi", "max": "50Gi"}})
    with pytest.raises(CatalogError, match=r"storage\.home: needs min <= default <= max"):
        Catalog.from_data(data)
    data = dict(catalog_data, storage={"scratch": {"storage_class": "Bad Class!", "min": "1Gi", "default": "1Gi",
                                                   "max": "2Gi"}})
    with pytest.raises(CatalogError, match=r"storage\.scratch\.storage_class"):
        Catalog.from_data(data)


def test_scratch_counts_toward_user_totals_and_group_quotas(with_storage):
    ledger = quota.Ledger()

    def claim(user, server, scratch):
        plan = validate({"scratch": scratch}, with_storage, ["students"])
        return quota.Claim.of(user, server, ["students"], plan)

    ledger.claim(with_storage, claim("sam", "a", "4Gi"))
    with pytest.raises(quota.QuotaExceeded) as err:
        ledger.claim(with_storage, claim("sam", "b", "3Gi"))
    assert "you would exceed 6Gi of scratch" in err.value.sentence and "2Gi of scratch" in err.value.sentence
    ledger.claim(with_storage, claim("sam", "b", "2Gi"))
    with pytest.raises(quota.QuotaExceeded) as err:
        ledger.claim(with_storage, claim("kim", "a", "3Gi"))
    assert err.value.sentence.startswith("Quota of group 'students'") and "8Gi of scratch" in err.value.sentence


def test_the_form_offers_the_sizes_and_reads_them(with_storage):
    allowance = with_storage.allowance(["students"])
    html = render_form(with_storage, allowance, {}, FormContext(home_size=6 * 1024**3, home_used=1024**3))
    assert 'name="home"' in html and 'name="scratch"' in html
    assert "6Gi to 10Gi" in html and "Your home volume is 6Gi now, 1Gi used; it only grows." in html
    assert "1Gi to 4Gi at /scratch" in html
    assert request_from_form({"home": ["8Gi"], "scratch": ["3Gi"]})["scratch"] == "3Gi"


def test_the_form_tells_a_home_s_use_to_a_tenth_of_its_unit(with_storage):
    allowance = with_storage.allowance(["students"])
    html = render_form(with_storage, allowance, {}, FormContext(home_size=8 * 1024**3, home_used=3435973837))
    assert "Your home volume is 8Gi now, 3.2Gi used; it only grows." in html
    html = render_form(with_storage, allowance, {}, FormContext(home_size=8 * 1024**3, home_used=1536 * 1024))
    assert "8Gi now, 1.5Mi used" in html


def test_the_form_has_no_size_fields_without_storage(catalog):
    html = render_form(catalog, catalog.allowance(["students"]), {})
    assert 'name="home"' not in html and 'name="scratch"' not in html


def test_the_schema_documents_the_fields():
    properties = json_schema()["properties"]
    assert "only grows" in properties["home"]["description"] and "/scratch" in properties["scratch"]["description"]


# -- what Kubernetes receives -------------------------------------------------------------


@pytest.fixture
def storage_catalog_file(tmp_path, catalog_data):
    import yaml

    def write(**storage) -> str:
        path = tmp_path / "catalog.yaml"
        path.write_text(yaml.safe_dump({**catalog_data, "storage": {**STORAGE, **storage}}))
        return str(path)
    return write


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_the_pod_gets_scratch_ephemeral_limits_and_the_home_size(storage_catalog_file):
    from tests.support.spawners import pod_for

    pod = await pod_for({"scratch": "3Gi", "home": "8Gi", "packages": ["tqdm"]}, ["students"],
                        catalog_path=storage_catalog_file())
    notebook = next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")
    scratch = next(v for v in pod["spec"]["volumes"] if v["name"] == "dcloud-scratch")
    assert scratch == {"name": "dcloud-scratch", "emptyDir": {"sizeLimit": "3Gi"}}
    assert {"name": "dcloud-scratch", "mountPath": "/scratch"} in notebook["volumeMounts"]
    # the writable layer's 5Gi, plus the emptyDir scratch and the package emptyDir, which the
    # kubelet counts against the containers' limits
    assert notebook["resources"]["limits"]["ephemeral-storage"] == "18Gi"
    assert notebook["resources"]["requests"]["ephemeral-storage"] == "4Gi"
    installer = pod["spec"]["initContainers"][0]["resources"]
    assert installer["limits"]["ephemeral-storage"] == "5Gi" and installer["requests"]["ephemeral-storage"] == "1Gi"


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_scratch_on_a_storage_class_is_a_generic_ephemeral_volume(storage_catalog_file):
    from tests.support.spawners import make_spawner, pod_for

    path = storage_catalog_file(scratch={"storage_class": "fast", "min": "1Gi", "default": "2Gi", "max": "100Gi"})
    pod = await pod_for({"scratch": "50Gi"}, ["researchers"], catalog_path=path)
    scratch = next(v for v in pod["spec"]["volumes"] if v["name"] == "dcloud-scratch")
    claim = scratch["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "50Gi"}}}
    notebook = next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")
    assert notebook["resources"]["limits"]["ephemeral-storage"] == "5Gi"  # the claim is not the node's disk

    spawner = make_spawner(["researchers"], catalog_path=path)
    spawner.dcloud_plan = spawner.validate_options({"home": "20Gi"})
    await spawner.load_user_options()
    assert spawner.storage_capacity == "20Gi" and spawner.storage_class == "standard"


def test_every_queue_covers_ephemeral_storage(with_storage):
    from dcloud_spawner.core.queueing import capacity
    from dcloud_spawner.kube.kueue_objects import kueue_objects

    catalog = with_storage.model_copy(update={"queueing": with_storage.queueing.model_copy(
        update={"enabled": True, "capacity": {g.id: 8 for g in with_storage.gpu_classes},
                "cpu_capacity": 64, "memory_capacity": 256 * 1024**3})})
    objects = kueue_objects(catalog, "dcloud", capacity(catalog))
    queues = [o for o in objects if o["kind"] in ("ClusterQueue", "Cohort")]
    assert queues
    for queue in queues:
        plain = queue["spec"]["resourceGroups"][0]
        assert plain["coveredResources"] == ["cpu", "memory", "ephemeral-storage"], queue["metadata"]["name"]
        (entry,) = [r for r in plain["flavors"][0]["resources"] if r["name"] == "ephemeral-storage"]
        assert "borrowingLimit" not in entry  # never what keeps a notebook waiting


def test_with_queueing_the_hub_still_counts_group_scratch(with_storage):
    catalog = with_storage.model_copy(update={"queueing": with_storage.queueing.model_copy(update={"enabled": True})})
    ledger = quota.Ledger()

    def claim(user: str, scratch: str) -> quota.Claim:
        return quota.Claim.of(user, "", ["students"], validate({"scratch": scratch}, catalog, ["students"]))

    ledger.claim(catalog, claim("sam", "4Gi"))
    ledger.claim(catalog, claim("kim", "4Gi"))
    with pytest.raises(quota.QuotaExceeded, match="8Gi of scratch"):
        ledger.claim(catalog, claim("lee", "1Gi"))


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_packages_go_to_an_environment_on_the_home_volume(storage_catalog_file):
    from tests.support.spawners import pod_for

    home = {"volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
            "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan"}]}
    pod = await pod_for({"packages": ["tqdm", "rich>=13"]}, ["students"], catalog_path=storage_catalog_file(),
                        **home)
    again = await pod_for({"packages": ["rich>=13", "tqdm"]}, ["students"], catalog_path=storage_catalog_file(),
                          **home)
    (installer,) = pod["spec"]["initContainers"]
    assert installer["volumeMounts"] == [{"name": "home", "mountPath": "/home/jovyan"}]
    assert installer["command"][:2] == ["python", "-c"]
    envs_dir, key, keep, separator = installer["command"][3:7]
    assert (envs_dir, keep, separator) == ("/home/jovyan/.dcloud/envs", "3", "--")
    assert installer["command"][-3:] == ["--", "tqdm", "rich>=13"]  # the user's values only after --
    notebook = next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")
    env = {e["name"]: e.get("value") for e in notebook["env"]}
    assert env["PYTHONPATH"] == f"/home/jovyan/.dcloud/envs/{key}"
    assert env["PATH"].startswith(f"/home/jovyan/.dcloud/envs/{key}/bin:")
    assert "dcloud-packages" not in [v["name"] for v in pod["spec"]["volumes"]]
    assert again["spec"]["initContainers"][0]["command"][4] == key  # the same set, the same environment
    assert notebook["resources"]["limits"]["ephemeral-storage"] == "7Gi"  # no package emptyDir to count


@pytest.mark.usefixtures("offline_kubeconfig")
async def test_the_package_installer_mounts_the_home_as_zero_to_jupyterhub_names_it(storage_catalog_file):
    """The chart's home volume is named by a template KubeSpawner expands ("volume-{user_server}");
    the installer's mount of it expands the same way, or the API server refuses the pod."""
    from tests.support.spawners import pod_for

    home = {"volumes": [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
            "volume_mounts": [{"name": "volume-{user_server}", "mountPath": "/home/jovyan", "subPath": "{username}"}]}
    pod = await pod_for({"packages": ["tqdm"]}, ["students"], catalog_path=storage_catalog_file(), **home)
    (installer,) = pod["spec"]["initContainers"]
    notebook = next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")
    (mount,) = [m for m in notebook["volumeMounts"] if m["mountPath"] == "/home/jovyan"]
    assert installer["volumeMounts"] == [mount]
    assert mount["name"] in [v["name"] for v in pod["spec"]["volumes"]]
    assert "{" not in mount["name"] and "{" not in mount["subPath"]


@pytest.mark.parametrize("message, sentence", [
    ('Usage of EmptyDir volume "dcloud-scratch" exceeds the limit "3Gi". ',
     "Your last server was stopped because it wrote more than its 3Gi scratch disk (/scratch) holds, so Kubernetes "
     "evicted it. Choose a larger scratch size below, or write less there."),
    ("Pod ephemeral local storage usage exceeds the total limit of containers 18Gi. ",
     "Your last server was stopped because it wrote more than the 5Gi it may write outside your home and /scratch "
     "(its own disk, /tmp and logs), so Kubernetes evicted it. Keep large files in your home or /scratch."),
    ('Container notebook exceeded its local ephemeral storage limit "18Gi". ', None),
    ("The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 512Mi. ",
     "Your last server was stopped because its node ran short of disk, so Kubernetes evicted it; start it again."),
])
def test_an_evicted_server_is_told_why_on_the_next_visit(with_storage, message, sentence):
    from dcloud_spawner.kube.failures import evicted

    plan = validate({"scratch": "3Gi"}, with_storage, ["students"])
    pod = {"status": {"phase": "Failed", "reason": "Evicted", "message": message}}
    said = evicted(pod, plan)
    assert said is not None and "\n" not in said
    if sentence:
        assert said == sentence
    assert evicted({"status": {"phase": "Running"}}, plan) is None


def test_an_evicted_server_that_ended_cleanly_is_told_why_from_the_kubelet_s_event(with_storage):
    """A notebook server exits 0 on the eviction's SIGTERM: its pod ends Succeeded with no reason
    (Kubernetes >= 1.27); the kubelet's Evicted event on that pod is what tells why."""
    from dcloud_spawner.kube.failures import evicted

    plan = validate({"scratch": "2Gi"}, with_storage, ["students"])
    pod = {"metadata": {"uid": "uid-2"}, "status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "notebook", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}
    event = {"reason": "Evicted", "type": "Warning", "involvedObject": {"kind": "Pod", "uid": "uid-2"},
             "message": 'Usage of EmptyDir volume "dcloud-scratch" exceeds the limit "2Gi". '}
    assert evicted(pod, plan, [event]) == (
        "Your last server was stopped because it wrote more than its 2Gi scratch disk (/scratch) holds, so Kubernetes "
        "evicted it. Choose a larger scratch size below, or write less there.")
    assert evicted(pod, plan, []) is None  # stopped by its user, or its process ended: nothing to tell
    earlier = {**event, "involvedObject": {"kind": "Pod", "uid": "uid-1"}}  # an earlier pod of the same name
    assert evicted(pod, plan, [earlier]) is None
    running = {"metadata": {"uid": "uid-2"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "notebook", "state": {"running": {}}}]}}
    assert evicted(running, plan, [event]) is None  # told once it has ended, not while the kill is under way


def test_the_progress_page_says_when_packages_were_reused(with_storage):
    from dcloud_spawner.kube.failures import packages_outcome

    plan = validate({"packages": ["tqdm", "rich"]}, with_storage, ["students"])

    def installer(message: str, code: int = 0) -> dict:
        return {"status": {"initContainerStatuses": [{"name": "dcloud-packages", "state": {
            "terminated": {"exitCode": code, "message": message}}}]}}

    assert packages_outcome(installer("reused 0123abcd"), plan) == (
        "Reusing your packages: tqdm, rich (built at an earlier start; pip did not run)")
    assert packages_outcome(installer("built 0123abcd"), plan).startswith("Built your packages into your home")
    assert packages_outcome(installer("ERROR: no such thing", 1), plan) is None
    assert packages_outcome({"status": {}}, plan) is None


# -- group quotas of home volumes --------------------------------------------------------------

GI = 1024**3


@pytest.fixture
def home_quota(with_storage) -> Catalog:
    quotas = {"students": {"max_home": "20Gi"}, "physics": {"max_gpus": 2}}
    return with_storage.model_copy(update={"quotas": with_storage.quotas.model_validate({"groups": quotas})})


def volume(name: str, size_gib: int, *groups: str) -> quota.HomeVolume:
    return quota.HomeVolume("dcloud", name, tuple(groups), size_gib * GI)


def claim(volumes: quota.HomeVolumes, catalog: Catalog, home: quota.HomeVolume, most: int | None = None) -> None:
    """The claim of the start of the volume's owner (claim-<user>), as the spawner makes it."""
    volumes.claim(catalog, home, (home.name.removeprefix("claim-"), ""), most)


def test_home_volumes_of_a_group_s_members_stay_within_its_max_home(home_quota):
    volumes = quota.HomeVolumes()
    volumes.seen("dcloud", [volume("claim-sam", 8, "students"), volume("claim-kim", 6, "students", "physics"),
                            volume("claim-lee", 30, "physics")], since=volumes.now())
    claim(volumes, home_quota, volume("claim-ann", 6, "students"))  # 8 + 6 + 6 = 20: just fits
    with pytest.raises(quota.QuotaExceeded) as err:
        claim(volumes, home_quota, volume("claim-bo", 1, "students"))
    assert err.value.field == "home" and err.value.sentence == (
        "Home size 1Gi would take group 'students' past its 20Gi of home volumes, since its other members already "
        "hold 20Gi; there is no room for a new one, so ask the administrators for more.")
    assert "claim-bo" not in [v.name for v in volumes.volumes]  # a refusal records nothing
    with pytest.raises(quota.QuotaExceeded) as err:  # growing: the room left, from its own size
        claim(volumes, home_quota, volume("claim-sam", 10, "students"))
    assert err.value.sentence.endswith("since its other members already hold 12Gi; your home cannot grow now, "
                                       "so ask for 8Gi, its size now.")
    claim(volumes, home_quota, volume("claim-lee", 40, "physics"))  # physics sums no home volumes


def test_the_same_claim_name_in_another_namespace_is_another_volume(home_quota):
    volumes = quota.HomeVolumes()
    volumes.seen("dcloud", [volume("claim-sam", 15, "students")], since=volumes.now())
    volumes.seen("other", [quota.HomeVolume("other", "claim-sam", ("students",), 5 * GI)], since=volumes.now())
    with pytest.raises(quota.QuotaExceeded) as err:  # 15 + 5 held by the two claim-sam
        volumes.claim(home_quota, volume("claim-ann", 1, "students"), ("ann", ""))
    assert "its other members already hold 20Gi" in err.value.sentence
    volumes.seen("other", [], since=volumes.now())  # a listing of one namespace says nothing of another
    assert [(v.namespace, v.name) for v in volumes.volumes] == [("dcloud", "claim-sam")]


def test_a_start_that_does_not_grow_its_home_is_never_refused(home_quota):
    volumes = quota.HomeVolumes()
    # the quota was lowered under volumes that already exist
    volumes.seen("dcloud", [volume("claim-sam", 15, "students"), volume("claim-kim", 15, "students")],
                 since=volumes.now())
    claim(volumes, home_quota, volume("claim-sam", 15, "students"))
    with pytest.raises(quota.QuotaExceeded) as err:
        claim(volumes, home_quota, volume("claim-kim", 16, "students"))
    assert "your home cannot grow now, so ask for 15Gi" in err.value.sentence


def test_room_left_is_what_may_be_asked(home_quota):
    volumes = quota.HomeVolumes()
    volumes.seen("dcloud", [volume("claim-sam", 12, "students"), volume("claim-kim", 2, "students")],
                 since=volumes.now())
    with pytest.raises(quota.QuotaExceeded) as err:
        claim(volumes, home_quota, volume("claim-kim", 9, "students"))
    assert err.value.sentence == (
        "Home size 9Gi would take group 'students' past its 20Gi of home volumes, since its other members already "
        "hold 12Gi; ask for at most 8Gi.")
    claim(volumes, home_quota, volume("claim-kim", 8, "students"))


def test_the_size_suggested_fits_every_group_and_the_user_s_own_max_home(home_quota):
    """The sentence names the group with the least room, and never suggests more than the user
    may have (their policies' max_home), whatever the groups leave."""
    quotas = {"students": {"max_home": "20Gi"}, "lab": {"max_home": "12Gi"}}
    catalog = home_quota.model_copy(update={"quotas": home_quota.quotas.model_validate({"groups": quotas})})
    volumes = quota.HomeVolumes()
    volumes.seen("dcloud", [volume("claim-sam", 8, "students"), volume("claim-kim", 9, "lab")], since=volumes.now())
    with pytest.raises(quota.QuotaExceeded) as err:  # students leave 12Gi, lab only 3Gi
        claim(volumes, catalog, volume("claim-ann", 13, "lab", "students"), most=50 * GI)
    assert err.value.sentence == (
        "Home size 13Gi would take group 'lab' past its 12Gi of home volumes, since its other members already "
        "hold 9Gi; ask for at most 3Gi.")
    with pytest.raises(quota.QuotaExceeded) as err:  # students leave 12Gi; ann may have 10Gi at most
        claim(volumes, catalog, volume("claim-ann", 14, "students"), most=10 * GI)
    assert err.value.sentence.endswith("since its other members already hold 8Gi; ask for at most 10Gi.")


def test_racing_claims_see_each_other_and_a_listing_never_forgets_a_claim_not_made_yet(home_quota):
    """Two members' starts list the volumes (neither exists yet), then claim one after the other:
    each fits alone, not both. A claim stays until a listing shows its volume, or until its start
    has ended and a listing begun since shows what it left."""
    clock = iter(range(100))
    volumes = quota.HomeVolumes(clock=lambda: float(next(clock)))
    began_a, began_b = volumes.now(), volumes.now()
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=began_a)
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=began_b)
    claim(volumes, home_quota, volume("claim-ann", 10, "students"))
    with pytest.raises(quota.QuotaExceeded):
        claim(volumes, home_quota, volume("claim-bo", 10, "students"))
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=began_b)  # slow: from before ann claimed
    assert sorted(v.name for v in volumes.volumes) == ["claim-ann", "claim-sam"]
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=volumes.now())  # ann's claim not made yet
    assert sorted(v.name for v in volumes.volumes) == ["claim-ann", "claim-sam"]
    volumes.release(("ann", ""))  # ann's start failed before KubeSpawner made the claim
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=volumes.now())
    assert [v.name for v in volumes.volumes] == ["claim-sam"]
    claim(volumes, home_quota, volume("claim-bo", 10, "students"))


def test_a_listing_between_a_claim_and_its_volume_keeps_the_claim(home_quota):
    """Ann's start claims 10Gi; her claim is made later in the start, by KubeSpawner. A third
    member's listing that begins after Ann's claim but before her claim exists must still count it
    (8 + 10 + 10 would be 28Gi of 20Gi); so must one that shows a grown claim at its old size."""
    clock = iter(range(100))
    volumes = quota.HomeVolumes(clock=lambda: float(next(clock)))
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=volumes.now())
    claim(volumes, home_quota, volume("claim-ann", 10, "students"))
    volumes.seen("dcloud", [volume("claim-sam", 8, "students")], since=volumes.now())  # bo's, before ann's claim exists
    with pytest.raises(quota.QuotaExceeded) as err:
        claim(volumes, home_quota, volume("claim-bo", 10, "students"))
    assert "its other members already hold 18Gi; ask for at most 2Gi." in err.value.sentence
    # sam grows 8 -> 10 (within 20: ann 10 + sam 10); a listing before the patch shows 8
    claim(volumes, home_quota, volume("claim-sam", 10, "students"))
    volumes.seen("dcloud", [volume("claim-sam", 8, "students"), volume("claim-ann", 10, "students")],
                 since=volumes.now())
    with pytest.raises(quota.QuotaExceeded) as err:
        claim(volumes, home_quota, volume("claim-bo", 1, "students"))
    assert "its other members already hold 20Gi" in err.value.sentence
    # once listings show both volumes as their starts left them, the listings alone decide
    volumes.seen("dcloud", [volume("claim-sam", 10, "students"), volume("claim-ann", 10, "students")],
                 since=volumes.now())
    volumes.seen("dcloud", [volume("claim-sam", 10, "students")], since=volumes.now())  # ann's volume deleted
    claim(volumes, home_quota, volume("claim-bo", 10, "students"))
