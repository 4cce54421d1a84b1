"""Free and total GPUs per class from Node and Pod objects (the pure part of availability)."""

from dcloud_spawner.core.availability import GpuAvailability, compute, pod_request


def node(name, labels, gpus, resource="nvidia.com/gpu", ready=True, taint=True, unschedulable=False):
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable,
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}] if taint else []},
        "status": {"allocatable": {resource: str(gpus), "cpu": "32"},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(node_name, gpus, phase="Running", resource="nvidia.com/gpu", init=0):
    spec = {"nodeName": node_name, "containers": [{"resources": {"limits": {resource: str(gpus)}}}]}
    if init:
        spec["initContainers"] = [{"resources": {"requests": {resource: str(init)}}}]
    return {"spec": spec, "status": {"phase": phase}}


T4 = {"nvidia.com/gpu.product": "Tesla-T4"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_free_is_allocatable_minus_running_requests(catalog):
    nodes = [node("t4-0", T4, 4), node("t4-1", T4, 4), node("a100-0", A100, 8),
             node("mig-0", {}, 7, resource="nvidia.com/mig-1g.10gb")]
    pods = [pod("t4-0", 3), pod("t4-1", 1), pod("t4-1", 2, phase="Succeeded"), pod("a100-0", 8),
            pod("mig-0", 1, resource="nvidia.com/mig-1g.10gb"), pod(None, 4)]
    result = compute(catalog, nodes, pods)
    assert result["t4"] == GpuAvailability(free=4, total=8, largest_free_block=3)
    assert result["a100"] == GpuAvailability(free=0, total=8, largest_free_block=0)
    assert result["a100-mig-1g"] == GpuAvailability(free=6, total=7, largest_free_block=6)


def test_unready_cordoned_or_untolerated_nodes_do_not_count(catalog):
    nodes = [node("t4-0", T4, 4, ready=False), node("t4-1", T4, 4, unschedulable=True), node("t4-2", T4, 4)]
    nodes[2]["spec"]["taints"].append({"key": "maintenance", "value": "x", "effect": "NoSchedule"})
    assert compute(catalog, nodes, [])["t4"] == GpuAvailability(0, 0, 0)


def test_wrong_labels_do_not_count(catalog):
    assert compute(catalog, [node("x", {"nvidia.com/gpu.product": "Tesla-V100"}, 4)], [])["t4"].total == 0


def test_pod_request_takes_init_containers_into_account():
    assert pod_request(pod("n", 1, init=3), "nvidia.com/gpu") == 3
    assert pod_request(pod("n", 2, init=1), "nvidia.com/gpu") == 2
    assert pod_request({"spec": {}}, "nvidia.com/gpu") == 0


class FakeCache:
    def __init__(self, objects):
        self.resources = {o["metadata"]["name"]: o for o in objects}


def test_cached_snapshot_follows_changes_and_deletions(catalog):
    from dcloud_spawner.kube.watch import ClusterWatch

    nodes = [node("t4-0", T4, 4), node("t4-1", T4, 4)]
    pods = [pod("t4-0", 1), pod("t4-1", 2)]
    for i, obj in enumerate(nodes + pods):
        obj["metadata"] = {**obj.get("metadata", {}), "name": obj.get("metadata", {}).get("name", f"p{i}"),
                           "uid": f"u{i}", "resourceVersion": "1"}
    watch = ClusterWatch()
    watch.nodes, watch.pods = FakeCache(nodes), FakeCache(pods)
    assert watch.snapshot(catalog)["t4"] == GpuAvailability(5, 8, 3)
    pods[0]["status"]["phase"] = "Succeeded"
    pods[0]["metadata"]["resourceVersion"] = "2"
    assert watch.snapshot(catalog)["t4"] == GpuAvailability(6, 8, 4)
    del watch.pods.resources[pods[1]["metadata"]["name"]]
    assert watch.snapshot(catalog)["t4"] == compute(catalog, nodes, [pods[0]])["t4"] == GpuAvailability(8, 8, 4)
