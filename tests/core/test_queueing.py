"""Queueing on Kueue, the pure parts: the catalog's settings, the queue a server joins, the
Kueue objects ``dcloud kueue`` prints, the request's 'wait', the form, and reading Workloads.

The same objects are applied to a real control plane with Kueue in tests/kube/test_queue_cluster.py.
"""

import copy
import re
import subprocess
import sys

import pytest
import yaml

from dcloud_spawner.core import quotas as quota
from dcloud_spawner.core.availability import GpuAvailability
from dcloud_spawner.core.catalog import Catalog, CatalogError
from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.core.queueing import (
    QUEUE_LABEL,
    Shares,
    capacity,
    describe,
    ordinal,
    queue_for,
)
from dcloud_spawner.core.validation import validate
from dcloud_spawner.hub.form import FormContext, render_form, request_from_form
from dcloud_spawner.hub.metrics import Metrics
from dcloud_spawner.kube.kueue_objects import kueue_objects
from dcloud_spawner.kube.workloads import workload_class

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
GIB = 1024**3


@pytest.fixture
def queued_data(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["quotas"] = {"groups": {"students": {"max_gpus": 4},
                                 "researchers": {"max_gpus_per_class": {"a100": 12}, "max_cpu": 64}}}
    data["queueing"] = {"enabled": True, "max_wait": "30m", "capacity": {"a100": 16, "t4": 8, "a100-mig-1g": 7}}
    return data


@pytest.fixture
def queued(queued_data):
    return Catalog.from_data(queued_data)


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def quota_of(spec, flavor, resource):
    for group in spec["resourceGroups"]:
        for entry in group["flavors"]:
            if entry["name"] == flavor:
                return next(r for r in entry["resources"] if r["name"] == resource)
    raise KeyError(flavor)


# -- catalog settings ------------------------------------------------------------------

@pytest.mark.parametrize("written, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), (45, 45), ("2h", 7200)])
def test_max_wait_is_a_duration(queued_data, written, seconds):
    queued_data["queueing"]["max_wait"] = written
    assert Catalog.from_data(queued_data).queueing.max_wait == seconds


@pytest.mark.parametrize("written", ["30 minutes", "", "-5m", True, "1d", 0])
def test_a_bad_max_wait_names_the_key(queued_data, written):
    queued_data["queueing"]["max_wait"] = written
    with pytest.raises(CatalogError) as caught:
        Catalog.from_data(queued_data)
    assert any(line.startswith("queueing.max_wait:") for line in caught.value.errors), caught.value.errors


def test_capacity_of_an_unknown_class_is_a_catalog_error(queued_data):
    queued_data["queueing"]["capacity"]["h100"] = 8
    with pytest.raises(CatalogError) as caught:
        Catalog.from_data(queued_data)
    assert "queueing.capacity.h100: unknown GPU class 'h100'" in str(caught.value)


def test_queueing_is_off_unless_the_catalog_turns_it_on(catalog):
    assert catalog.queueing.enabled is False
    assert describe(catalog) == ["queueing is off: full GPU classes refuse a spawn; quotas.groups are "
                                 "enforced by the hub"]


# -- which queue a server joins -----------------------------------------------------------

def test_a_student_joins_the_students_queue(queued):
    queue = queue_for(queued, ["students"], queued.gpu_class("t4"))
    assert (queue.name, queue.who) == ("dcloud-students", "group students")


def test_the_most_permissive_group_wins(queued):
    # researchers have no limit on T4 (only on A100), students four: the T4 goes through researchers
    assert queue_for(queued, ["students", "researchers"], queued.gpu_class("t4")).name == "dcloud-researchers"
    assert queue_for(queued, ["researchers", "medical"], queued.gpu_class("a100")).name == "dcloud-researchers"


def test_a_group_without_a_quota_queues_with_everyone(queued_data):
    del queued_data["quotas"]["groups"]["researchers"]
    catalog = Catalog.from_data(queued_data)
    assert queue_for(catalog, ["researchers", "students"], catalog.gpu_class("t4")).name == "dcloud-everyone"


def test_a_cpu_server_joins_everyones_queue(queued):
    assert queue_for(queued, [], None).name == "dcloud-everyone"
    assert queue_for(queued, ["students"], None).name == "dcloud-everyone"


def test_odd_group_names_become_distinct_object_names(queued_data):
    queued_data["policies"]["groups"]["Lab A/B"] = {"gpu_classes": ["t4"], "max_gpus": 1}
    queued_data["policies"]["groups"]["lab-a-b"] = {"gpu_classes": ["t4"], "max_gpus": 1}
    queued_data["quotas"]["groups"]["Lab A/B"] = {"max_gpus": 2}
    queued_data["quotas"]["groups"]["lab-a-b"] = {"max_gpus": 2}
    catalog = Catalog.from_data(queued_data)
    names = [o["metadata"]["name"] for o in kueue_objects(catalog, "jhub", capacity(catalog))
             if o["kind"] == "ClusterQueue"]
    assert len(names) == len(set(names)) == 5
    assert all(DNS_LABEL.match(n) for n in names), names
    assert "dcloud-lab-a-b" in names


# -- the Kueue objects ---------------------------------------------------------------------

def test_flavors_carry_the_classes_node_labels_and_tolerations(queued):
    flavors = by_kind(kueue_objects(queued, "jhub", capacity(queued)), "ResourceFlavor")
    assert set(flavors) == {"dcloud-cpu", "dcloud-a100", "dcloud-t4", "dcloud-a100-mig-1g"}
    assert flavors["dcloud-a100"]["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert flavors["dcloud-t4"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    assert flavors["dcloud-cpu"]["spec"] == {}


def test_group_shares_are_capped_and_the_rest_is_the_cohorts(queued):
    objects = kueue_objects(queued, "jhub", capacity(queued))
    queues = by_kind(objects, "ClusterQueue")
    assert set(queues) == {"dcloud-students", "dcloud-researchers", "dcloud-everyone"}
    researchers = queues["dcloud-researchers"]["spec"]
    assert researchers["cohortName"] == "dcloud"
    assert quota_of(researchers, "dcloud-a100", "nvidia.com/gpu") == {
        "name": "nvidia.com/gpu", "nominalQuota": 12, "borrowingLimit": 0}
    assert quota_of(researchers, "dcloud-t4", "nvidia.com/gpu") == {"name": "nvidia.com/gpu", "nominalQuota": 0}
    assert quota_of(researchers, "dcloud-cpu", "cpu") == {"name": "cpu", "nominalQuota": "64", "borrowingLimit": "0"}
    students = queues["dcloud-students"]["spec"]
    assert quota_of(students, "dcloud-t4", "nvidia.com/gpu")["nominalQuota"] == 4
    assert quota_of(students, "dcloud-a100", "nvidia.com/gpu")["nominalQuota"] == 0  # not theirs to use
    everyone = queues["dcloud-everyone"]["spec"]
    assert quota_of(everyone, "dcloud-a100", "nvidia.com/gpu") == {"name": "nvidia.com/gpu", "nominalQuota": 0}
    cohort = by_kind(objects, "Cohort")["dcloud"]["spec"]
    assert quota_of(cohort, "dcloud-a100", "nvidia.com/gpu")["nominalQuota"] == 16 - 12
    assert quota_of(cohort, "dcloud-t4", "nvidia.com/gpu")["nominalQuota"] == 8 - 4
    # the MIG slices are another resource name: their own resource group
    covered = [g["coveredResources"] for g in cohort["resourceGroups"]]
    assert covered == [["cpu", "memory"], ["nvidia.com/gpu"], ["nvidia.com/mig-1g.10gb"]]
    assert all(q["spec"]["preemption"]["reclaimWithinCohort"] == "Never" for q in queues.values())


def test_preemption_lets_a_group_reclaim_its_share(queued_data):
    queued_data["queueing"]["preemption"] = True
    catalog = Catalog.from_data(queued_data)
    queues = by_kind(kueue_objects(catalog, "jhub", capacity(catalog)), "ClusterQueue")
    assert {q["spec"]["preemption"]["reclaimWithinCohort"] for q in queues.values()} == {"Any"}
    assert any("preempting borrowers" in line for line in describe(catalog))


def test_local_queues_go_to_the_notebook_namespace(queued):
    local = by_kind(kueue_objects(queued, "jhub", capacity(queued)), "LocalQueue")
    assert {(o["metadata"]["namespace"], o["spec"]["clusterQueue"]) for o in local.values()} == {
        ("jhub", "dcloud-students"), ("jhub", "dcloud-researchers"), ("jhub", "dcloud-everyone")}


def test_capacity_comes_from_the_catalog_or_the_cluster(queued_data):
    del queued_data["queueing"]["capacity"]["t4"]
    catalog = Catalog.from_data(queued_data)
    with pytest.raises(ValueError, match="the number of t4 GPUs in the cluster is unknown"):
        capacity(catalog)
    assert capacity(catalog, {"t4": 8, "a100": 99}).gpus == {"a100": 16, "t4": 8, "a100-mig-1g": 7}


def test_check_warns_when_shares_exceed_the_cluster(queued):
    lines = describe(queued, Shares({"a100": 8, "t4": 8, "a100-mig-1g": 7}, 100, 100 * GIB))
    assert "warning: the groups' shares of a100 add up to 12, more than the 8 in the cluster; Kueue may admit " \
           "servers no node can hold" in lines


# -- request, validation, quotas -----------------------------------------------------------

def test_wait_is_refused_where_queueing_is_off(catalog):
    with pytest.raises(RequestError) as caught:
        validate({"gpu": {"type": "t4"}, "wait": True}, catalog, ["students"])
    assert caught.value.field == "wait"
    assert caught.value.sentence.startswith("Wait in line is not available on this hub")


@pytest.mark.parametrize("value", ["yes", 1, None, ["true"]])
def test_wait_must_be_a_boolean(queued, value):
    with pytest.raises(RequestError) as caught:
        validate({"wait": value}, queued, ["students"])
    assert caught.value.sentence == "Wait in line must be true or false."


def test_wait_is_kept_in_the_stored_options(queued):
    plan = validate({"gpu": {"type": "t4"}, "wait": True}, queued, ["students"])
    assert plan.wait and plan.user_options()["wait"] is True
    assert "wait" not in validate({"gpu": {"type": "t4"}}, queued, ["students"]).user_options()


def test_with_queueing_group_quotas_are_kueues_and_user_totals_stay(queued_data):
    queued_data["quotas"]["groups"]["students"] = {"max_gpus": 1}
    catalog = Catalog.from_data(queued_data)
    ledger = quota.Ledger()
    one = validate({"gpu": {"type": "t4"}}, catalog, ["students"])
    ledger.claim(catalog, quota.Claim.of("alice", "", ["students"], one))
    ledger.claim(catalog, quota.Claim.of("amy", "", ["students"], one))  # over the group's 1: Kueue's to hold
    with pytest.raises(quota.QuotaExceeded, match="Quota: you already run"):
        ledger.claim(catalog, quota.Claim.of("alice", "second", ["students"], one))  # her own total is 1
    queued_data["queueing"]["enabled"] = False
    off = Catalog.from_data(queued_data)
    with pytest.raises(quota.QuotaExceeded, match="Quota of group 'students'"):
        quota.check(off, ledger.claims[:1], quota.Claim.of("amy", "", ["students"], one))


# -- the form ------------------------------------------------------------------------------------

def test_the_form_offers_to_wait_and_shows_the_line(queued):
    context = FormContext(availability={"a100": GpuAvailability(0, 16, 0), "t4": GpuAvailability(3, 8, 2)},
                          waiting={"a100": 2, "t4": 0}, can_queue=True)
    html = render_form(queued, queued.allowance(["researchers"]), None, context)
    assert "NVIDIA A100 80GB · 0 of 16 free, 2 waiting" in html
    assert "NVIDIA T4 16GB · 3 of 8 free<" in html
    assert re.search(r'<input[^>]*type="checkbox" name="wait" value="on" id="dcloud-wait"', html)
    assert re.search(r'<label[^>]*for="dcloud-wait">Wait in line for up to 30 minutes</label>', html)
    assert "A started server is never preempted." in html


def test_the_form_says_when_servers_may_be_preempted(queued_data):
    queued_data["queueing"]["preemption"] = True
    catalog = Catalog.from_data(queued_data)
    html = render_form(catalog, catalog.allowance(["researchers"]), None, FormContext(can_queue=True))
    assert "may be preempted" in html


def test_no_wait_box_without_queueing_without_a_queue_or_without_gpus(catalog, queued):
    queues = FormContext(can_queue=True)
    assert 'name="wait"' not in render_form(catalog, catalog.allowance(["researchers"]), None, queues)
    assert 'name="wait"' not in render_form(queued, queued.allowance([]), None, queues)  # CPU only
    # a backend without Kueue (the local one) never offers to wait
    assert 'name="wait"' not in render_form(queued, queued.allowance(["researchers"]), None, FormContext())


def test_the_tick_becomes_wait_true(queued):
    raw = request_from_form({"environment": ["pytorch"], "gpu_type": ["t4"], "gpu_count": ["1"], "wait": ["on"]})
    assert raw["wait"] is True
    assert "wait" not in request_from_form({"environment": ["pytorch"]})  # unticked: not sent
    assert validate(raw, queued, ["students"]).wait


# -- reading Kueue's Workloads ------------------------------------------------------------------

def pod_set(resource, count, selector=None):
    return {"name": "main", "count": 1, "template": {"spec": {
        "nodeSelector": selector or {},
        "containers": [{"name": "c", "resources": {"requests": {resource: str(count)}}}]}}}


def test_a_pending_notebook_is_told_by_its_node_selector(queued):
    workload = {"spec": {"podSets": [pod_set("nvidia.com/gpu", 2, {"nvidia.com/gpu.product": "Tesla-T4"})]}}
    assert workload_class(queued, workload) == ("t4", 2)


def test_an_admitted_workload_is_told_by_its_flavor(queued):
    workload = {"spec": {"podSets": [pod_set("nvidia.com/gpu", 1)]},
                "status": {"admission": {"podSetAssignments": [{"flavors": {"nvidia.com/gpu": "dcloud-a100"}}]}}}
    assert workload_class(queued, workload) == ("a100", 1)


def test_a_batch_job_asking_only_for_a_resource(queued):
    job = {"spec": {"podSets": [{**pod_set("nvidia.com/mig-1g.10gb", 1), "count": 3}]}}
    assert workload_class(queued, job) == ("a100-mig-1g", 3)  # the one class of that resource
    ambiguous = {"spec": {"podSets": [pod_set("nvidia.com/gpu", 1)]}}
    assert workload_class(queued, ambiguous) == (None, 0)  # A100 or T4: not counted as either
    assert workload_class(queued, {"spec": {"podSets": [pod_set("cpu", 4)]}}) == (None, 0)


def test_a_workloads_gpus_are_its_pods_effective_request(queued):
    """As Kueue counts them (and the scheduler): the larger of the containers' sum and the
    largest init container, the same rule as the availability counts."""
    job = {"spec": {"podSets": [{**pod_set("nvidia.com/mig-1g.10gb", 1), "count": 2}]}}
    spec = job["spec"]["podSets"][0]["template"]["spec"]
    spec["containers"].append({"name": "d", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "2"}}})
    assert workload_class(queued, job) == ("a100-mig-1g", 6)  # (1 + 2) per pod, 2 pods
    spec["initContainers"] = [{"name": "i", "resources": {"requests": {"nvidia.com/mig-1g.10gb": "4"}}}]
    assert workload_class(queued, job) == ("a100-mig-1g", 8)  # the init container's 4 per pod


@pytest.mark.parametrize("n, said", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                     (12, "12th"), (13, "13th"), (21, "21st"), (102, "102nd")])
def test_ordinals(n, said):
    assert ordinal(n) == said


def test_queued_gpus_are_a_metric(queued):
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = Metrics(lambda: (queued, None), lambda: [], registry=registry)
    metrics.gpus.queued = lambda: {"a100": 3, "t4": 0}
    metrics.queue_waited("admitted", 42.0)
    text = generate_latest(registry).decode()
    assert 'dcloud_gpus_queued{gpu_class="a100"} 3.0' in text
    assert 'dcloud_queue_wait_seconds_bucket{le="60.0",outcome="admitted"} 1.0' in text
    metrics.unregister()


# -- the CLI ------------------------------------------------------------------------------------

def dcloud(*args):
    return subprocess.run([sys.executable, "-m", "dcloud_spawner.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_kueue_command_prints_the_objects(tmp_path, queued_data):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(queued_data))
    result = dcloud("kueue", str(path), "--namespace", "jhub", "--capacity", "a100=8")
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert [o["kind"] for o in objects].count("ClusterQueue") == 3
    assert quota_of(by_kind(objects, "Cohort")["dcloud"]["spec"], "dcloud-a100", "nvidia.com/gpu")["nominalQuota"] == 0
    assert "# warning: the groups' shares of a100 add up to 12, more than the 8" in result.stdout
    check = dcloud("check", str(path))
    assert "queues: ClusterQueue dcloud-students: the share of group students is 4 t4, lent to others while " \
           "idle, never exceeded" in check.stdout


def test_kueue_command_needs_the_cluster_size(tmp_path, queued_data):
    del queued_data["queueing"]["capacity"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(queued_data))
    result = dcloud("kueue", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("error: The number of a100 GPUs in the cluster is unknown: set "
                                     "queueing.capacity.a100 in the catalog, or pass --capacity a100=N or "
                                     "--from-cluster.")
    bad = dcloud("kueue", str(path), "--capacity", "h100=2")
    assert bad.returncode == 2 and "unknown GPU class 'h100'" in bad.stderr


def test_the_queue_label_is_kueues():
    assert QUEUE_LABEL == "kueue.x-k8s.io/queue-name"
