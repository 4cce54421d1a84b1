"""The container images of the real test node, built here with buildah.

No image registry is reachable where the tests run, so every image a pod of the test cluster
runs is built on this machine and handed to containerd as a docker-archive tar (the node's
harness runs ``ctr -n k8s.io images import`` on each :attr:`Image.archive`):

- :data:`PAUSE`: the pod sandbox, a static Go program (``images/local/pause``) in an empty image;
- :data:`VOLUME_HELPER`: the helper pod of real-0's volume provisioner (Debian's mkfs.ext4 and
  mount, which sets up loop devices; ``images/local/volume-helper``), imported with the pause image;
- stand-ins for the upstream bases: a Debian bookworm rootfs (``images/local/debian-rootfs.sh``),
  a Jupyter Docker Stacks look-alike (:data:`NOTEBOOK_BASE`) and a k8s-hub look-alike;
- DCloud's own images, from their real Dockerfiles with ``--build-arg BASE_IMAGE=<stand-in>``;
- the public images KubeSpawner's own cluster tests run (:data:`UPSTREAM_SUITE`), under their
  exact names, which those tests ask for: imported into real-0 by tests/upstream, not by ``up``.

``images/README.md`` ("Local builds") says what the stand-ins are and are not. Everything goes to
``$DCLOUD_IMAGE_CACHE`` (default ``~/.cache/dcloud-images``): buildah's storage (vfs driver, its
own root, so the system's storage is never touched), pip wheelhouses, build logs and the
archives. Each archive's file name carries a hash of everything its image is built from, so an
image is rebuilt only when one of its inputs (or a base's) changes.

    python -m tests.cluster.images build    # builds what is missing (all groups); prints name and archive
    python -m tests.cluster.images names    # real name -> local name, nothing built

Needs root (debootstrap, chroot), buildah, debootstrap, Go, and pip access to an index.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
LOCAL = IMAGES / "local"

# Part of every image's key: raise it when a change here (not in an input file) should rebuild.
RECIPE_VERSION = 1
# The label that records an image's key in its config, so storage and archives can be checked.
KEY_LABEL = "dcloud.test.inputs"

PREFIX = "localhost/dcloud-test/"
PAUSE = PREFIX + "pause:3.10"
DEBIAN = PREFIX + "debian:bookworm"
VOLUME_HELPER = PREFIX + "volume-helper:1"  # tests/cluster/storage.py
NOTEBOOK_BASE = PREFIX + "notebook-standin:2025-07-07"
HUB_BASE = PREFIX + "k8s-hub-standin:4.4.0"
HUB = PREFIX + "hub:2026.11"  # built by .ci/setup and `build`; real-0 runs notebooks only
NOTEBOOK_PYTORCH_CUDA = PREFIX + "notebook-pytorch-cuda:2026.11"
NOTEBOOK_PYTORCH_CPU = PREFIX + "notebook-pytorch-cpu:2026.11"
NOTEBOOK_TENSORFLOW_CUDA = PREFIX + "notebook-tensorflow-cuda:2026.11"
NOTEBOOK_TENSORFLOW_CPU = PREFIX + "notebook-tensorflow-cpu:2026.11"

# KubeSpawner's tests/conftest.py and default image, by the names its pods ask for (the kubelet
# runs what is imported under that name; nothing is pulled). Two are the stand-ins above under a
# second name, same content: the Debian base has the Python 3 and /bin/sh the exec pod uses,
# and the notebook stand-in is what the singleuser image is (jupyterhub-singleuser as jovyan).
PYTHON_SLIM = "docker.io/library/python:3.12-slim"  # the suite's exec pod
JUPYTERHUB = "quay.io/jupyterhub/jupyterhub:latest"  # the suite's hub pod
SINGLEUSER = "quay.io/jupyterhub/singleuser:latest"  # KubeSpawner's default user image
UPSTREAM_SUITE = (PYTHON_SLIM, JUPYTERHUB, SINGLEUSER)

# The name an image has in images/images.yaml, hub_config/catalog.yaml and the Helm values,
# mapped to the image built here that stands in for it. The SciPy environment's upstream image
# has nothing DCloud relies on beyond the Docker Stacks basics, so the stand-in base serves it.
LOCAL_NAMES: dict[str, str] = {
    "ghcr.io/dcloud-project/hub:2026.11": HUB,
    "ghcr.io/dcloud-project/notebook-pytorch-cuda:2026.11": NOTEBOOK_PYTORCH_CUDA,
    "ghcr.io/dcloud-project/notebook-pytorch-cpu:2026.11": NOTEBOOK_PYTORCH_CPU,
    "ghcr.io/dcloud-project/notebook-tensorflow-cuda:2026.11": NOTEBOOK_TENSORFLOW_CUDA,
    "ghcr.io/dcloud-project/notebook-tensorflow-cpu:2026.11": NOTEBOOK_TENSORFLOW_CPU,
    "quay.io/jupyter/scipy-notebook:2025-07-07": NOTEBOOK_BASE,
}

# Wheels for the stand-ins' Python (Debian bookworm: CPython 3.11, glibc 2.36, x86_64), not
# for whatever Python runs this module. pip takes manylinux tags literally, so list them all.
WHEEL_PLATFORM = [
    "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
    *(arg for minor in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
]  # fmt: skip
# The hub Dockerfile's `pip install` runs as root, which reads ~/.config/pip/pip.conf. A local
# build mounts the wheelhouse, with this file in it, over /root: pip then installs from those
# wheels and nothing else. The mount must cover a directory the base already has, because
# buildah leaves the mount points it creates in the image (an empty /etc/pip.conf, say).
HUB_WHEELS_MOUNT = "/root"
HUB_CONSTRAINTS = "images/hub/constraints.txt"  # the hub image's pinned packages
OFFLINE_PIP_CONF = f"[global]\nno-index = true\nfind-links = {HUB_WHEELS_MOUNT}\n"


@dataclass(frozen=True)
class Image:
    """A built image: its name (as ``ctr images import`` will register it) and its archive."""

    name: str
    archive: Path


class BuildError(RuntimeError):
    """A build step failed; the message names the step and ends with its log's last lines."""


def cache_dir() -> Path:
    return Path(os.environ.get("DCLOUD_IMAGE_CACHE", Path.home() / ".cache" / "dcloud-images"))


@dataclass(frozen=True)
class _Spec:
    """How to build one image. ``files`` (repository paths) and ``base``'s key make its key."""

    name: str
    how: str  # "pause", "debian", "build" (buildah build of ``dockerfile``) or "alias" (``base`` renamed)
    files: tuple[str, ...]
    base: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    base_arg: str | None = None  # the build argument that names the base
    wheels: str | None = None  # the wheelhouse it mounts: "notebook", "hub", "jupyterhub" or "dcloud"
    ignorefile: str | None = None
    export: bool = True  # returned by build_all (the node imports it)
    upstream: bool = False  # in UPSTREAM_SUITE: built and returned only when asked for (upstream=True)


def _package_files() -> tuple[str, ...]:
    """What images/hub/Dockerfile.dockerignore lets into the hub's build context."""
    names = ["pyproject.toml", "README.md"] + (["LICENSE"] if (ROOT / "LICENSE").exists() else [])
    sources = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "dcloud_spawner").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return (*names, *sources)


def _specs() -> list[_Spec]:
    """Every image, bases before the images built on them."""
    notebooks = [
        (NOTEBOOK_PYTORCH_CUDA, "pytorch-cuda"),
        (NOTEBOOK_PYTORCH_CPU, "pytorch-cpu"),
        (NOTEBOOK_TENSORFLOW_CUDA, "tensorflow-cuda"),
        (NOTEBOOK_TENSORFLOW_CPU, "tensorflow-cpu"),
    ]
    hub_files = ("images/hub/Dockerfile", "images/hub/Dockerfile.dockerignore", HUB_CONSTRAINTS,
                 *_package_files())  # fmt: skip
    return [
        _Spec(PAUSE, "pause", ("images/local/pause/main.go", "images/local/pause/go.mod")),
        _Spec(DEBIAN, "debian", ("images/local/debian-rootfs.sh",), export=False),
        _Spec(VOLUME_HELPER, "build", ("images/local/volume-helper/Containerfile",), base=DEBIAN,
              dockerfile="images/local/volume-helper/Containerfile", context="images/local/volume-helper",
              base_arg="DEBIAN_IMAGE"),
        _Spec(NOTEBOOK_BASE, "build", ("images/local/notebook-standin/Containerfile",
                                       "images/local/notebook-standin/requirements.txt"),
              base=DEBIAN, dockerfile="images/local/notebook-standin/Containerfile",
              context="images/local/notebook-standin", base_arg="DEBIAN_IMAGE", wheels="notebook"),
        _Spec(HUB_BASE, "build", ("images/local/hub-standin/Containerfile",
                                  "images/local/hub-standin/requirements.txt"),
              base=DEBIAN, dockerfile="images/local/hub-standin/Containerfile",
              context="images/local/hub-standin", base_arg="DEBIAN_IMAGE", wheels="hub",
              export=False),
        *(
            _Spec(name, "build", (f"images/{directory}/Dockerfile",), base=NOTEBOOK_BASE,
                  dockerfile=f"images/{directory}/Dockerfile", context=f"images/{directory}",
                  base_arg="BASE_IMAGE")
            for name, directory in notebooks
        ),
        _Spec(HUB, "build", hub_files, base=HUB_BASE, dockerfile="images/hub/Dockerfile",
              context=".", base_arg="BASE_IMAGE", wheels="dcloud",
              ignorefile="images/hub/Dockerfile.dockerignore"),
        _Spec(PYTHON_SLIM, "alias", (), base=DEBIAN, upstream=True),
        _Spec(SINGLEUSER, "alias", (), base=NOTEBOOK_BASE, upstream=True),
        _Spec(JUPYTERHUB, "build", ("images/local/jupyterhub-standin/Containerfile",
                                    "images/local/jupyterhub-standin/requirements.txt"),
              base=DEBIAN, dockerfile="images/local/jupyterhub-standin/Containerfile",
              context="images/local/jupyterhub-standin", base_arg="DEBIAN_IMAGE", wheels="jupyterhub",
              upstream=True),
    ]  # fmt: skip


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _keys(specs: list[_Spec]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for spec in specs:
        parts = [f"recipe {RECIPE_VERSION}", spec.name, keys[spec.base] if spec.base else ""]
        for name in spec.files:
            parts += [name, hashlib.sha256((ROOT / name).read_bytes()).hexdigest()]
        keys[spec.name] = _digest(parts)
    return keys


def _slug(name: str) -> str:
    return name.removeprefix(PREFIX).replace("/", "_").replace(":", "_")


def archive_path(name: str, key: str) -> Path:
    return cache_dir() / "archives" / f"{_slug(name)}-{key}.tar"


class _Builder:
    """Runs the steps; every command's output goes to a log file under the cache."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.cache = cache_dir()
        self.log = log
        self.logs = self.cache / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        storage = self.cache / "storage"
        # vfs: plain directory copies, which work on any filesystem and need no overlay module.
        self.buildah = ["buildah", "--root", str(storage / "root"), "--runroot",
                        str(storage / "runroot"), "--storage-driver", "vfs"]  # fmt: skip

    def run(self, argv: list[str], logname: str, **kwargs) -> str:
        """Run ``argv``; return its stdout, append both streams to the log, raise on failure."""
        logfile = self.logs / f"{logname}.log"
        with logfile.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, **kwargs)
            out.write(result.stdout)
        if result.returncode != 0:
            tail = "".join(logfile.read_text().splitlines(keepends=True)[-25:])
            raise BuildError(f"{argv[0]} {' '.join(argv[1:3])} ... failed ({logfile}):\n{tail}")
        return result.stdout

    def stored_key(self, name: str) -> str | None:
        """The key label of the image ``name`` in buildah's storage, or None if it is not there."""
        result = subprocess.run([*self.buildah, "inspect", "--type", "image", name],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            return None
        labels = json.loads(result.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}
        return labels.get(KEY_LABEL)

    # --- wheelhouses ----------------------------------------------------------------------

    def wheelhouse(self, which: str) -> Path:
        """A directory of wheels (and requirements.txt) that installs without an index."""
        if which == "dcloud":
            pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
            # The package's requirements, and its build backend: pip builds it from source.
            lines = [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]
            # The versions the Dockerfile's `--constraint` pins, so its offline install finds them.
            constraints = (ROOT / HUB_CONSTRAINTS).read_text()
            lines += [line for line in constraints.splitlines() if line.strip() and not line.startswith("#")]
        else:
            text = (LOCAL / f"{which}-standin" / "requirements.txt").read_text()
            lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        target = self.cache / "wheels" / f"{which}-{_digest([*WHEEL_PLATFORM, *lines])}"
        if (target / "requirements.txt").is_file():
            return target
        self.log(f"downloading wheels for {which}: {', '.join(lines)}")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / "requirements.in").write_text("\n".join(lines) + "\n")
        # The host's pip, with the host's configuration (index, certificates, cache).
        self.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest",
                  str(partial), *WHEEL_PLATFORM, "--requirement", str(partial / "requirements.in")],
                 f"wheels-{which}")  # fmt: skip
        (partial / "requirements.in").rename(partial / "requirements.txt")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target

    # --- the three kinds of build ---------------------------------------------------------

    def build_pause(self, spec: _Spec, key: str) -> None:
        binary = self.cache / "work" / "pause"
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false",
               "GOWORK": "off"}  # fmt: skip
        self.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
                 "pause", cwd=LOCAL / "pause", env=env)  # fmt: skip
        self.from_scratch(spec, key, lambda mount: shutil.copy2(binary, mount / "pause"),
                          ["--entrypoint", '["/pause"]', "--user", "65535:65535"])  # fmt: skip

    def build_debian(self, spec: _Spec, key: str) -> None:
        script = str(LOCAL / "debian-rootfs.sh")
        debs = str(self.cache / "debs")
        self.from_scratch(spec, key, lambda mount: self.run([script, str(mount), debs], "debian"),
                          ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "--env", "LANG=C.UTF-8", "--cmd", '["/bin/bash"]'])  # fmt: skip

    def from_scratch(self, spec: _Spec, key: str, fill: Callable[[Path], object], config: list[str]) -> None:
        """An image made by writing into an empty container's root directory."""
        logname = _slug(spec.name)
        container = self.run([*self.buildah, "from", "scratch"], logname).strip()
        try:
            mount = Path(self.run([*self.buildah, "mount", container], logname).strip())
            fill(mount)
            self.run([*self.buildah, "config", *config, "--label", f"{KEY_LABEL}={key}", container], logname)
            self.run([*self.buildah, "commit", "--quiet", "--format", "docker", container, spec.name], logname)
        finally:
            subprocess.run([*self.buildah, "rm", container], capture_output=True)

    def build_dockerfile(self, spec: _Spec, key: str) -> None:
        assert spec.dockerfile and spec.context and spec.base and spec.base_arg
        argv = [
            # --force-rm: a failed step's container is removed too (else it stays in storage); buildah
            # accepts it only with --layers or --no-cache, and there is no layer cache to use anyway.
            *self.buildah, "build", "--format", "docker", "--pull=never", "--no-cache", "--force-rm",
            # chroot isolation: RUN needs no runc and no network namespace (nothing is fetched).
            "--isolation", "chroot",
            "--build-arg", f"{spec.base_arg}={spec.base}",
            "--label", f"{KEY_LABEL}={key}",
            "--file", str(ROOT / spec.dockerfile), "--tag", spec.name,
        ]  # fmt: skip
        if spec.ignorefile:
            argv += ["--ignorefile", str(ROOT / spec.ignorefile)]
        if spec.wheels == "dcloud":
            wheels = self.wheelhouse("dcloud")
            conf = wheels / ".config" / "pip" / "pip.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(OFFLINE_PIP_CONF)
            argv += ["--volume", f"{wheels}:{HUB_WHEELS_MOUNT}:ro"]
        elif spec.wheels:
            argv += ["--volume", f"{self.wheelhouse(spec.wheels)}:/wheels:ro"]
        self.run([*argv, str(ROOT / spec.context)], _slug(spec.name))

    # --- storage and archives -------------------------------------------------------------

    def ensure_stored(self, spec: _Spec, key: str, specs: dict[str, _Spec], keys: dict[str, str]) -> None:
        """Make ``spec``'s image, at ``key``, present in buildah's storage; an alias is only
        exported (its base's image under its name: one copy in storage, the base's)."""
        if spec.how == "alias":
            assert spec.base
            self.ensure_stored(specs[spec.base], keys[spec.base], specs, keys)
            self.log(f"exporting {spec.base} as {spec.name}")
            self.export(spec.name, key, source=spec.base)
            return
        if self.stored_key(spec.name) == key:
            return
        archive = archive_path(spec.name, key)
        if archive.is_file():
            self.log(f"loading {spec.name} from {archive.name}")
            self.run([*self.buildah, "pull", "--quiet", f"docker-archive:{archive}"], _slug(spec.name))
            if self.stored_key(spec.name) == key:
                return
        if spec.base:
            self.ensure_stored(specs[spec.base], keys[spec.base], specs, keys)
        self.log(f"building {spec.name}")
        started = time.monotonic()
        {"pause": self.build_pause, "debian": self.build_debian, "build": self.build_dockerfile}[spec.how](spec, key)
        self.log(f"built {spec.name} in {time.monotonic() - started:.0f} s")
        self.export(spec.name, key)
        if not any(other.base == spec.name for other in specs.values()):
            # Nothing builds on it: the archive is all that is needed, and with vfs each stored
            # image is a full copy of its layers (~0.5 GB a notebook image).
            self.run([*self.buildah, "rmi", spec.name], _slug(spec.name))

    def export(self, name: str, key: str, source: str | None = None) -> None:
        """Write the stored image ``source`` (default: ``name``) to ``name``'s archive, as ``name``."""
        archive = archive_path(name, key)
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        self.run([*self.buildah, "push", "--quiet", source or name, f"docker-archive:{partial}:{name}"], _slug(name))
        partial.rename(archive)
        for old in archive.parent.glob(f"{_slug(name)}-*.tar"):
            if old != archive:
                old.unlink()

    def prune(self) -> None:
        """Drop images no tag points to any more (earlier builds of a rebuilt image)."""
        subprocess.run([*self.buildah, "rmi", "--prune"], capture_output=True)


@contextmanager
def _locked() -> Iterator[None]:
    """One build at a time per cache (the cluster harness and a test may both ask)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def images(upstream: bool = False) -> list[Image]:
    """Every image the node imports (``upstream``: those of :data:`UPSTREAM_SUITE` instead), with
    the archive it has when built from the current inputs."""
    specs = _specs()
    keys = _keys(specs)
    return [Image(s.name, archive_path(s.name, keys[s.name])) for s in specs if s.export and s.upstream == upstream]


def missing(upstream: bool = False) -> list[Image]:
    return [image for image in images(upstream) if not image.archive.is_file()]


def build_all(
    log: Callable[[str], None] = print, names: Collection[str] | None = None, upstream: bool = False
) -> list[Image]:
    """Build every image (or those ``names``) whose archive is missing, and the bases they need;
    return them. ``upstream``: the images of :data:`UPSTREAM_SUITE` instead of the node's."""

    def chosen(found: list[Image]) -> list[Image]:
        return [image for image in found if names is None or image.name in names]

    with _locked():
        wanted = chosen(missing(upstream))
        if not wanted:
            return chosen(images(upstream))
        started = time.monotonic()
        builder = _Builder(log)
        specs = _specs()
        keys = _keys(specs)
        by_name = {s.name: s for s in specs}
        for image in wanted:
            spec, key = by_name[image.name], keys[image.name]
            if builder.stored_key(spec.name) == key:  # built, but its archive was removed
                builder.export(spec.name, key)
            else:
                builder.ensure_stored(spec, key, by_name, keys)
        builder.prune()
        log(f"images built in {time.monotonic() - started:.0f} s; archives in {cache_dir() / 'archives'}")
        return chosen(images(upstream))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=("build", "names"))
    args = parser.parse_args(argv)
    if args.command == "names":
        for real, local in LOCAL_NAMES.items():
            print(f"{real} {local}")
        print(f"(pod sandbox) {PAUSE}")
        for name in UPSTREAM_SUITE:
            print(f"{name} {name} (KubeSpawner's own tests)")
        return 0
    try:
        built = build_all(log=_stderr) + build_all(log=_stderr, upstream=True)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for image in built:
        print(f"{image.name} {image.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
