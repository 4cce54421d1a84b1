import copy

import pytest

from dcloud_spawner.core.catalog import Catalog, CatalogError


def load(data):
    return Catalog.from_data(data)


def test_example_catalog_has_the_documented_ids(catalog):
    assert [e.id for e in catalog.environments] == ["pytorch", "tensorflow", "scipy"]
    assert [g.id for g in catalog.gpu_classes] == ["a100", "t4", "a100-mig-1g"]
    assert [d.id for d in catalog.datasets] == ["imagenet", "coco", "medical-scans"]
    assert catalog.environment("scipy").image.gpu is None
    assert catalog.gpu_class("a100-mig-1g").resource == "nvidia.com/mig-1g.10gb"
    assert catalog.gpu_class("t4").node_selector == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert catalog.dataset("coco").source.type == "nfs"


def test_unknown_key_is_named_with_its_place(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["gpu_classes"][1]["maxcount"] = 3
    with pytest.raises(CatalogError) as err:
        load(data)
    assert "gpu_classes[1].maxcount: unknown key" in err.value.errors


def test_dangling_reference_is_named(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["policies"]["groups"]["students"]["gpu_classes"] = ["t4", "h100"]
    with pytest.raises(CatalogError) as err:
        load(data)
    assert any(
        "policies.groups.students.gpu_classes[1]: unknown GPU class 'h100'" in e
        for e in err.value.errors
    )


def test_duplicate_ids_and_bad_quantities(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["environments"].append(copy.deepcopy(data["environments"][0]))
    with pytest.raises(CatalogError) as err:
        load(data)
    assert "environments[3].id: duplicate id 'pytorch'" in err.value.errors
    data = copy.deepcopy(catalog_data)
    data["policies"]["groups"]["students"]["max_memory"] = "lots"
    with pytest.raises(CatalogError) as err:
        load(data)
    assert err.value.errors == [
        "policies.groups.students.max_memory: 'lots' is not a memory quantity such as 16Gi"
    ]


def test_bad_resource_name_and_dataset_source(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["gpu_classes"][0]["resource"] = "gpu"
    data["datasets"][0]["source"] = {"type": "s3", "bucket": "x"}
    with pytest.raises(CatalogError) as err:
        load(data)
    text = "\n".join(err.value.errors)
    assert "gpu_classes[0].resource" in text
    assert "datasets[0].source" in text


def test_yaml_errors_are_catalog_errors():
    with pytest.raises(CatalogError, match="not valid YAML"):
        Catalog.from_yaml("environments: [")
    with pytest.raises(CatalogError, match="top level must be a mapping"):
        Catalog.from_yaml("- a")


def test_allowance_for_no_group(catalog):
    a = catalog.allowance([])
    assert a.gpu_classes == () and a.max_gpus == 0
    assert a.max_cpu == 2 and a.max_memory == 8 * 2**30
    assert a.datasets == ("imagenet", "coco")


def test_allowance_students(catalog):
    a = catalog.allowance(["students"])
    assert a.gpu_classes == ("t4",) and a.max_gpus == 1
    assert a.max_cpu == 4 and a.max_memory == 16 * 2**30


def test_allowance_is_the_union_of_groups(catalog):
    a = catalog.allowance(["students", "researchers", "medical", "unknown-group"])
    assert a.gpu_classes == ("a100", "t4", "a100-mig-1g")
    assert a.max_gpus == 4 and a.max_cpu == 32 and a.max_memory == 256 * 2**30
    assert a.datasets == ("imagenet", "coco", "medical-scans")


def test_group_policy_cannot_exceed_catalog_bounds(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["policies"]["groups"]["researchers"]["max_cpu"] = 1000
    a = load(data).allowance(["researchers"])
    assert a.max_cpu == 64  # resources.cpu.max
