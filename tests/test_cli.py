import subprocess
import sys

import pytest
import yaml

from tests.conftest import EXAMPLE_CATALOG


def dcloud(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "dcloud_spawner.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env)


def test_check_ok():
    result = dcloud("check", str(EXAMPLE_CATALOG))
    assert result.returncode == 0
    assert "ok (3 environments, 3 GPU classes, 3 datasets, 3 group policies)" in result.stdout


def test_check_reports_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(EXAMPLE_CATALOG.read_text().replace("max_count: 8", "max_count: 8\n    colour: red"))
    result = dcloud("check", str(bad))
    assert result.returncode == 1
    assert "error: gpu_classes[0].colour: unknown key" in result.stderr


def test_render_prints_pod_first(tmp_path):
    options = tmp_path / "o.yaml"
    options.write_text("gpu: {type: t4, count: 1}\ndatasets: [imagenet]\n")
    result = dcloud("render", "--catalog", str(EXAMPLE_CATALOG), "--user", "alice",
                    "--groups", "students", "--options", str(options))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert docs[0]["kind"] == "Pod"
    assert docs[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_render_from_stdin_refuses_with_one_line():
    result = dcloud("render", "--catalog", str(EXAMPLE_CATALOG), "--user", "bob",
                    "--options", "-", stdin='{"gpu": {"type": "a100"}}')
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "error: GPUs are not available to you; leave GPU type empty for a CPU-only server.\n"


def test_render_invalid_catalog_is_exit_1(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("environments: []\n")
    result = dcloud("render", "--catalog", str(bad), "--user", "bob")
    assert result.returncode == 1 and result.stderr.startswith("error: invalid catalog")


def test_dockerfile_bakes_packages_in_exec_form(tmp_path):
    options = tmp_path / "o.json"
    options.write_text(
        '{"environment": "pytorch", "gpu": {"type": "t4"}, '
        '"packages": ["timm>=1.0", "x; os_name == \\"posix\\""]}'
    )
    result = dcloud("dockerfile", "--catalog", str(EXAMPLE_CATALOG), "--options", str(options))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "FROM ghcr.io/dcloud-project/notebook-pytorch-cuda:2026.11" in lines
    run = ('RUN ["python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", '
           '"--no-cache-dir", "--", "timm>=1.0", "x; os_name == \\"posix\\""]')
    assert run in lines


def test_dockerfile_refuses_bad_packages(tmp_path):
    options = tmp_path / "o.yaml"
    options.write_text("packages: ['--extra-index-url=http://evil x']\n")
    result = dcloud("dockerfile", "--catalog", str(EXAMPLE_CATALOG), "--options", str(options))
    assert result.returncode == 2 and "Extra package" in result.stderr


def test_schema_is_json():
    import json

    result = dcloud("schema")
    assert json.loads(result.stdout)["additionalProperties"] is False


def test_published_schema_is_current():
    from tests.conftest import ROOT

    result = dcloud("schema")
    published = (ROOT / "docs" / "request.schema.json").read_text()
    assert result.stdout == published, "regenerate with: dcloud schema > docs/request.schema.json"


def test_readme_settings_table_is_current():
    """The README's settings table is what `dcloud settings` prints from the traits' help."""
    readme = (EXAMPLE_CATALOG.parents[1] / "README.md").read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    documented = readme[readme.index(start) + len(start):readme.index(end)]
    result = dcloud("settings")
    assert result.returncode == 0, result.stderr
    assert documented == result.stdout, "README settings table is stale: paste `dcloud settings` into it"
    assert "`DCloudLocalSpawner.package_install_args`" in documented


def _limited_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # reading /dev/zero whole would OOM


def assert_error_lines(result, code):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr and all(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr


def test_render_reads_at_most_one_byte_past_the_limit():
    for args, stdin in (((), None), (("-",), "/dev/zero")):
        source = args[0] if args else "/dev/zero"
        with open(stdin or "/dev/null", "rb") as feed:
            result = subprocess.run(
                [sys.executable, "-m", "dcloud_spawner.cli", "render", "--catalog", str(EXAMPLE_CATALOG),
                 "--user", "bob", "--options", source],
                stdin=feed, capture_output=True, text=True, timeout=60, preexec_fn=_limited_memory)
        assert_error_lines(result, 2)
        assert result.stderr == "error: Configuration file is larger than 16 KiB; keep it to the fields.\n"


def test_huge_numbers_in_an_options_file_are_one_line(tmp_path):
    options = tmp_path / "o.json"
    options.write_text('{"cpu": ' + "9" * 5000 + "}")
    result = dcloud("render", "--catalog", str(EXAMPLE_CATALOG), "--user", "bob", "--options", str(options))
    assert_error_lines(result, 2)
    assert "more than 100 digits" in result.stderr


@pytest.mark.parametrize("content, text", [
    ("environments:\n  - id: x\n    display_name: Café\n".encode("latin-1"), "not UTF-8 text"),
    (("a: " + "[" * 10_000 + "]" * 10_000).encode(), "nested deeper than 64 levels"),
    (b"environments:\n  - id: x\n   bad: [\n", "not valid YAML (line 3)"),
    (b"environments: []\nenvironments: []\n", "appears twice"),
    (b"a: " + b"1" * 5000, "more than 100 digits"),
    (EXAMPLE_CATALOG.read_bytes().replace(b"display_name: PyTorch", b'display_name: "PyTorch\\nRUN id"'),
     "environments[0].display_name: must be one line"),
])
def test_check_errors_are_error_lines_never_tracebacks(tmp_path, content, text):
    path = tmp_path / "catalog.yaml"
    path.write_bytes(content)
    result = dcloud("check", str(path))
    assert_error_lines(result, 1)
    assert text in result.stderr


def test_usage_mistakes_are_error_lines():
    result = dcloud("render", "--catalog", str(EXAMPLE_CATALOG))
    assert_error_lines(result, 2)
    assert "--user" in result.stderr


def test_dockerfile_lines_are_only_what_the_catalog_means(tmp_path):
    import re

    options = tmp_path / "o.yaml"
    options.write_text("environment: pytorch\npackages: ['rich; python_version >= \"3.8\"']\n")
    result = dcloud("dockerfile", "--catalog", str(EXAMPLE_CATALOG), "--options", str(options))
    assert result.returncode == 0, result.stderr
    shapes = (r"# [^\r]*", r"FROM [A-Za-z0-9][A-Za-z0-9._/:@-]*", r"RUN \[.*\]", r"USER \$\{NB_UID:-1000\}")
    for line in result.stdout.splitlines():
        assert line.isprintable() and any(re.fullmatch(shape, line) for shape in shapes), line
    bad = tmp_path / "c.yaml"
    bad.write_bytes(EXAMPLE_CATALOG.read_bytes().replace(
        b"quay.io/jupyter/scipy-notebook:2025-07-07", b'"quay.io/jupyter/scipy-notebook:1\\nRUN id"', 1))
    result = dcloud("dockerfile", "--catalog", str(bad), "--options", str(options))
    assert_error_lines(result, 1)
    assert result.stdout == "" and "is not an image reference" in result.stderr


def test_the_wheel_carries_the_demo_catalog_and_the_templates(tmp_path):
    """`pip install dcloud-spawner && dcloud demo` works outside a checkout: the package data is in."""
    import zipfile

    root = EXAMPLE_CATALOG.parents[1]
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("dcloud_spawner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("dcloud_spawner/demo/catalog.yaml", "dcloud_spawner/hub/templates/form.html",
                   "dcloud_spawner/hub/templates/allocations.html", "dcloud_spawner/core/catalog.py",
                   "dcloud_spawner/kube/spawner.py", "dcloud_spawner/local/spawner.py"):
        assert needed in names, needed
    catalog = zipfile.ZipFile(wheel).read("dcloud_spawner/demo/catalog.yaml").decode()
    assert catalog == EXAMPLE_CATALOG.read_text()  # the same file hub_config/catalog.yaml links to
