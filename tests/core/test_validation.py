import pytest

from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.core.validation import validate


def refused(options, catalog, groups=()):
    with pytest.raises(RequestError) as err:
        validate(options, catalog, groups)
    return err.value


def test_defaults_for_a_user_in_no_group(catalog):
    plan = validate({}, catalog, [])
    assert plan.environment.id == "pytorch" and plan.gpu is None
    assert plan.image == "ghcr.io/dcloud-project/notebook-pytorch-cpu:2026.11"
    assert plan.cpu_limit == 1 and plan.cpu_request == 0.5  # request_fraction 0.5
    assert plan.memory_limit == 4 * 2**30 == plan.memory_request


def test_student_gets_t4_with_gpu_image(catalog):
    plan = validate({"environment": "tensorflow", "gpu": {"type": "t4", "count": 1}},
                    catalog, ["students"])
    assert plan.gpu.id == "t4" and plan.gpu_count == 1
    assert plan.image.endswith("notebook-tensorflow-cuda:2026.11")


def test_student_cannot_have_a100(catalog):
    err = refused({"gpu": {"type": "a100", "count": 1}}, catalog, ["students"])
    assert err.sentence == "GPU class 'a100' is not available to you; you can use: t4."
    assert err.field == "gpu.type"


def test_guest_cannot_have_any_gpu(catalog):
    err = refused({"gpu": {"type": "t4"}}, catalog)
    assert "GPUs are not available to you" in err.sentence


def test_gpu_count_is_capped_by_policy_and_class(catalog):
    assert "choose 1 to 1" in refused({"gpu": {"type": "t4", "count": 2}}, catalog, ["students"]).sentence
    assert "choose 1 to 4" in refused({"gpu": {"type": "a100", "count": 5}}, catalog, ["researchers"]).sentence
    assert "choose 1 to 1" in refused({"gpu": {"type": "a100-mig-1g", "count": 2}}, catalog, ["researchers"]).sentence


def test_cpu_only_environment_refuses_gpu(catalog):
    err = refused({"environment": "scipy", "gpu": {"type": "t4"}}, catalog, ["students"])
    assert err.field == "environment" and "pytorch, tensorflow" in err.sentence


def test_unknown_environment_lists_choices(catalog):
    err = refused({"environment": "r-studio"}, catalog)
    assert err.sentence == (
        "Environment 'r-studio' is not available to you; you can use: pytorch, tensorflow, scipy."
    )


@pytest.mark.parametrize(
    "options, groups, text",
    [
        ({"cpu": 3}, [], "CPU cores must be between 0.5 and 2 for you."),
        ({"cpu": 0.1}, ["researchers"], "between 0.5 and 32"),
        ({"cpu": 1.0001}, [], "three decimals"),
        ({"memory": "9Gi"}, [], "Memory must be between 1Gi and 8Gi for you."),
        ({"memory": "lots"}, [], "Memory 'lots' is not a quantity"),
        ({"memory": "1.5"}, [], "not a quantity"),
        ({"memory": "100Mi"}, [], "between 1Gi"),
    ],
)
def test_cpu_and_memory_bounds(catalog, options, groups, text):
    assert text in refused(options, catalog, groups).sentence


def test_memory_quantities_are_normalised(catalog):
    plan = validate({"memory": "8192Mi"}, catalog, [])
    assert plan.memory_limit == 8 * 2**30
    assert plan.user_options()["memory"] == "8Gi"


def test_restricted_dataset_needs_its_group(catalog):
    err = refused({"datasets": ["medical-scans"]}, catalog, ["researchers"])
    assert err.sentence == (
        "Dataset 'medical-scans' is not available to you; you can use: imagenet, coco."
    )
    plan = validate({"datasets": ["medical-scans", "coco", "coco"]}, catalog, ["medical"])
    assert [d.id for d in plan.datasets] == ["medical-scans", "coco"]


@pytest.mark.parametrize(
    "spec, text",
    [
        ("numpy; rm -rf /", "is not a requirement"),
        ("--index-url=http://evil", "options are not allowed"),
        ("-r requirements.txt", "options are not allowed"),
        ("torch @ https://evil.example/torch.whl", "points at a URL"),
        ("$(curl evil)", "is not a requirement"),
        ("x" * 300, "is longer than 200 characters"),
        ("x.tar.gz", "looks like a file name"),
        ("evil.whl", "looks like a file name"),
        ("Evil.TGZ[extra]>=1; python_version > '3'", "looks like a file name"),
    ],
)
def test_hostile_packages(catalog, spec, text):
    err = refused({"packages": [spec]}, catalog)
    assert err.field == "packages" and text in err.sentence


def test_valid_packages_are_normalised(catalog):
    plan = validate({"packages": ["timm >= 1.0", "rich[jupyter]", "  "]}, catalog, [])
    assert plan.packages == ("timm>=1.0", "rich[jupyter]")


def test_too_many_packages(catalog):
    err = refused({"packages": [f"pkg{i}" for i in range(11)]}, catalog)
    assert "at most 10" in err.sentence


def test_user_options_round_trip(catalog):
    options = {"environment": "pytorch", "gpu": {"type": "a100", "count": 2}, "cpu": 8,
               "memory": "64Gi", "datasets": ["imagenet"], "packages": ["timm>=1.0"]}
    plan = validate(options, catalog, ["researchers"])
    assert plan.user_options() == {**options, "cpu": 8.0}
    assert validate(plan.user_options(), catalog, ["researchers"]) == plan


@pytest.mark.parametrize("cpu", [1.001, "1.001", 1.999, 0.515, "1.25"])
def test_three_decimals_are_counted_as_written_not_as_binary_floats(catalog, cpu):
    # 1.001 * 1000 is 1000.9999999999999 in binary floating point
    assert validate({"cpu": cpu}, catalog, ["researchers"]).cpu_limit == float(cpu)


@pytest.mark.parametrize("options, field", [
    ({"environment": "py\ntorch\x1b[31m\u202e"}, "environment"),
    ({"gpu": {"type": "t4\r\nX-Injected: 1"}}, "gpu.type"),
    ({"datasets": ["\x00" * 10_000]}, "datasets"),
    ({"packages": ["numpy\n--index-url=http://evil"]}, "packages"),
])
def test_refusals_quote_user_text_escaped_and_short(catalog, options, field):
    err = refused(options, catalog, ["researchers"])
    assert err.field == field
    assert err.sentence.isprintable() and len(err.sentence) < 300, err.sentence
