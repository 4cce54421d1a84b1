"""Free and total GPUs per class from Node and Pod objects (the pure part of availability).

Two implementations are held against each other: ``compute`` counts whole objects from
scratch; ``LiveAvailability`` keeps lean facts and adjusts counts per change (what the hub's
watches feed). Random change sequences must never make them differ.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcloud_spawner.core.availability import GpuAvailability, LiveAvailability
from dcloud_spawner.kube.facts import compute, node_facts, pod_facts, pod_request


def node(name, labels, gpus, resource="nvidia.com/gpu", ready=True, taint=True, unschedulable=False):
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "unschedulable": unschedulable,
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}] if taint else [],
        },
        "status": {
            "allocatable": {resource: str(gpus), "cpu": "32"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(node_name, gpus, phase="Running", resource="nvidia.com/gpu", init=0):
    spec = {"nodeName": node_name, "containers": [{"resources": {"limits": {resource: str(gpus)}}}]}
    if init:
        spec["initContainers"] = [{"resources": {"requests": {resource: str(init)}}}]
    return {"spec": spec, "status": {"phase": phase}}


T4 = {"nvidia.com/gpu.product": "Tesla-T4"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_free_is_allocatable_minus_running_requests(catalog):
    nodes = [
        node("t4-0", T4, 4),
        node("t4-1", T4, 4),
        node("a100-0", A100, 8),
        node("mig-0", {}, 7, resource="nvidia.com/mig-1g.10gb"),
    ]
    pods = [
        pod("t4-0", 3),
        pod("t4-1", 1),
        pod("t4-1", 2, phase="Succeeded"),
        pod("a100-0", 8),
        pod("mig-0", 1, resource="nvidia.com/mig-1g.10gb"),
        pod(None, 4),
    ]
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


def test_live_availability_follows_changes_and_deletions(catalog):
    live = LiveAvailability()
    live.replace_nodes({"t4-0": node_facts(node("t4-0", T4, 4)), "t4-1": node_facts(node("t4-1", T4, 4))})
    live.replace_pods({"ns/a": pod_facts(pod("t4-0", 1)), "ns/b": pod_facts(pod("t4-1", 2))})
    assert live.availability(catalog)["t4"] == GpuAvailability(5, 8, 3)
    live.set_pod("ns/a", pod_facts(pod("t4-0", 1, phase="Succeeded")))  # finished: holds nothing, kept nowhere
    assert live.availability(catalog)["t4"] == GpuAvailability(6, 8, 4)
    assert "ns/a" not in live.pods
    live.set_pod("ns/b", None)
    assert live.availability(catalog)["t4"] == GpuAvailability(8, 8, 4)
    live.set_node("t4-1", node_facts(node("t4-1", T4, 4, unschedulable=True)))  # cordoned
    assert live.availability(catalog)["t4"] == GpuAvailability(4, 4, 4)
    live.set_node("t4-0", None)
    assert live.availability(catalog)["t4"] == GpuAvailability(0, 0, 0)


def test_pod_facts_keep_only_node_and_extended_resources():
    assert pod_facts(pod("t4-0", 2, init=3)) == ("t4-0", (("nvidia.com/gpu", 3),))
    cpu_only = {"spec": {"nodeName": "c", "containers": [{"resources": {"requests": {"cpu": "2"}}}]}}
    assert pod_facts(cpu_only) == ("c", ())
    assert pod_facts(pod("t4-0", 2, phase="Failed")) is None
    facts = node_facts(node("a", A100, 8))
    assert facts.allocatable == (("nvidia.com/gpu", 8),) and facts.schedulable
    assert facts.taints == (("nvidia.com/gpu", "present", "NoSchedule"),)


# -- random change sequences: incremental == from scratch --------------------------------------------

NODE_NAMES = ["n0", "n1", "n2"]
PRODUCTS = [T4, A100, {"nvidia.com/gpu.product": "Tesla-V100"}, {}]
TAINTS = [
    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
    {"key": "maintenance", "value": "x", "effect": "NoExecute"},
    {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
]
RESOURCES = ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "example.com/fpga"]


@st.composite
def raw_nodes(draw, name):
    mostly = st.sampled_from([True, True, True, False])  # mostly nodes that serve a class
    raw = node(
        name,
        draw(st.sampled_from(PRODUCTS)),
        draw(st.integers(0, 8)),
        resource=draw(st.sampled_from(RESOURCES[:1] * 3 + RESOURCES)),
        ready=draw(mostly),
        taint=False,
        unschedulable=not draw(mostly),
    )
    raw["spec"]["taints"] = draw(
        st.lists(st.sampled_from(TAINTS[:1] * 4 + TAINTS), max_size=2, unique_by=lambda t: t["key"])
    )
    return raw


@st.composite
def raw_pods(draw):
    raw = pod(
        draw(st.sampled_from([*NODE_NAMES, None])),
        draw(st.integers(0, 4)),
        phase=draw(st.sampled_from(["Pending", "Running", "Running", "Running", "Succeeded", "Failed"])),
        resource=draw(st.sampled_from(RESOURCES[:1] * 3 + RESOURCES)),
        init=draw(st.integers(0, 3)),
    )
    if draw(st.booleans()):  # a second container, requesting instead of limiting
        raw["spec"]["containers"].append({"resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "1"}}})
    return raw


POD_KEYS = [f"ns/p{i}" for i in range(6)]
changes = st.one_of(
    st.tuples(st.just("node"), st.sampled_from(NODE_NAMES)).flatmap(
        lambda c: st.tuples(st.just(c[0]), st.just(c[1]), st.one_of(st.none(), raw_nodes(c[1])))
    ),
    st.tuples(st.just("pod"), st.sampled_from(POD_KEYS), st.one_of(st.none(), raw_pods())),
    st.tuples(st.just("unseen pod"), st.sampled_from(POD_KEYS), st.one_of(st.none(), raw_pods())),
    st.tuples(st.just("unseen node"), st.sampled_from(NODE_NAMES)).flatmap(
        lambda c: st.tuples(st.just(c[0]), st.just(c[1]), st.one_of(st.none(), raw_nodes(c[1])))
    ),
    st.tuples(st.sampled_from(["relist pods", "relist nodes", "other catalog"]), st.none(), st.none()),
)


def other_catalog(catalog):
    """The same catalog with the T4 class selecting V100 nodes and tolerating maintenance."""
    gpus = [
        g.model_copy(
            update={
                "node_selector": {"nvidia.com/gpu.product": "Tesla-V100"},
                "tolerations": [*g.tolerations, type(g.tolerations[0])(key="maintenance", operator="Exists")],
            }
        )
        if g.id == "t4"
        else g
        for g in catalog.gpu_classes
    ]
    return catalog.model_copy(update={"gpu_classes": gpus})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(changes, min_size=10, max_size=60))
def test_incremental_availability_equals_compute_from_scratch(catalog, sequence):
    """After every change, the live counts equal a count from scratch of the objects the watch
    has delivered; changes it missed (while disconnected) count once a re-list brings them."""
    catalogs = [catalog, other_catalog(catalog)]
    cluster = {"node": {}, "pod": {}}  # as the API server has them
    seen = {"node": {}, "pod": {}}  # as the watch delivered them
    live = LiveAvailability()
    for step, key, raw in sequence:
        kind = step.split()[-1]
        if kind in ("node", "pod"):
            cluster[kind].pop(key, None) if raw is None else cluster[kind].__setitem__(key, raw)
        if step in ("node", "pod"):  # a watch event
            seen[kind].pop(key, None) if raw is None else seen[kind].__setitem__(key, raw)
            facts = None if raw is None else (node_facts if kind == "node" else pod_facts)(raw)
            (live.set_node if kind == "node" else live.set_pod)(key, facts)
        elif step == "relist pods":
            seen["pod"] = dict(cluster["pod"])
            live.replace_pods({k: f for k, p in cluster["pod"].items() if (f := pod_facts(p)) is not None})
        elif step == "relist nodes":
            seen["node"] = dict(cluster["node"])
            live.replace_nodes({k: node_facts(n) for k, n in cluster["node"].items()})
        elif step == "other catalog":
            catalogs.reverse()
        expected = compute(catalogs[0], list(seen["node"].values()), list(seen["pod"].values()))
        assert live.availability(catalogs[0]) == expected, step
    live.replace_nodes({k: node_facts(n) for k, n in cluster["node"].items()})
    live.replace_pods({k: f for k, p in cluster["pod"].items() if (f := pod_facts(p)) is not None})
    for current in catalogs:
        assert live.availability(current) == compute(
            current, list(cluster["node"].values()), list(cluster["pod"].values())
        )
