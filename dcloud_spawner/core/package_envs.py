"""Package environments that persist on the user's home volume, one per set of packages.

A set of extra packages is installed once into ``<home>/.dcloud/envs/<key>/``, where the key
is a hash of everything that decides what pip would install: the environment's image, the
sorted requirement specifiers, the index URL and the admin's pip options. A later start with
the same key runs no pip at all; a changed set builds a new environment, and the oldest ones
beyond the catalog's ``storage.package_environments`` are removed.

The installer below is the same for every backend (the Kubernetes init container, the local
backend's install process). It never lets a half-built environment be used, and two servers
of one user building the same set at once never corrupt it: pip installs into a fresh
temporary folder beside the final one, which is published by one ``rename`` only once
complete; a rename onto an existing environment fails (the other build won) and the spare
copy is dropped. Folders of builds that died half-way are removed by later installs.

Its code is a constant: user input reaches it only as argv after ``--`` (pip's requirement
specifiers, as :meth:`Plan.pip_install_command` builds them), never as code.

A caller that watches the build (the local backend, where the hub limits its size and time) may
set, in the installer's environment: ``DCLOUD_BUILD_TAG`` (added to the building folder's name,
so the caller finds and measures its own build), ``DCLOUD_BUILD_TMP=1`` (pip's temporary files
inside the building folder, measured with it and removed before publishing),
``DCLOUD_MAX_BYTES`` (a larger build is never published: exit :data:`TOO_BIG`) and
``DCLOUD_DIE_WITH_PARENT=1`` (pip is killed when the installer dies, as the installer is with
the hub).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

ENVS_DIR = ".dcloud/envs"  # below the home directory
PIP_CACHE_DIR = ".dcloud/pip-cache"
COMPLETE = ".dcloud-complete"  # written last, inside the folder, before it is published
REUSED = "dcloud: reusing"  # the installer's first words when the environment exists
TOO_BIG = 97  # the installer's exit status for a build over DCLOUD_MAX_BYTES (pip never exits so)

# argv: python -c INSTALLER ENVS_DIR KEY KEEP -- PIP_ARGV...
INSTALLER = r"""
import os, shutil, subprocess, sys, tempfile, time
envs, key, keep, sep, pip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
assert sep == "--" and pip
final = os.path.join(envs, key)
def report(how):
    # where the backend reads how it went (Kubernetes: the container's termination message)
    if os.environ.get("DCLOUD_INSTALL_REPORT"):
        with open(os.environ["DCLOUD_INSTALL_REPORT"], "w") as out:
            out.write(how + " " + key)
def prune():
    # the newest `keep` environments stay (this one among them); builds dead for an hour go
    done = []
    for name in os.listdir(envs):
        path = os.path.join(envs, name)
        if name.startswith(".building-"):
            if time.time() - os.lstat(path).st_mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)
        elif os.path.isfile(os.path.join(path, ".dcloud-complete")):
            done.append((os.stat(os.path.join(path, ".dcloud-complete")).st_mtime, name))
    for _, name in sorted(done, reverse=True)[keep:]:
        if name != key:
            shutil.rmtree(os.path.join(envs, name), ignore_errors=True)
if os.path.isfile(os.path.join(final, ".dcloud-complete")):
    print("dcloud: reusing", key, flush=True)
    report("reused")
    os.utime(os.path.join(final, ".dcloud-complete"))  # the most recently used stays longest
    prune()
    sys.exit(0)
def size(top):
    # apparent sizes, each inode once, links not followed (as the local hub measures)
    seen, total = set(), 0
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total
me = os.getpid()
def die_with_me():
    # in pip's process before exec: killed when the installer dies, or now if it already has
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != me:
        os._exit(1)
os.makedirs(envs, exist_ok=True)
tag = os.environ.get("DCLOUD_BUILD_TAG", "")
building = tempfile.mkdtemp(prefix=".building-" + key + "-" + tag, dir=envs)
try:
    env = dict(os.environ, PIP_TARGET=building)
    scratch = None
    if os.environ.get("DCLOUD_BUILD_TMP") == "1":
        scratch = env["TMPDIR"] = os.path.join(building, ".tmp")
        os.mkdir(scratch)
    dies = os.environ.get("DCLOUD_DIE_WITH_PARENT") == "1"
    code = subprocess.call(pip, env=env, preexec_fn=die_with_me if dies else None)
    if code != 0:
        sys.exit(code)
    limit = int(os.environ.get("DCLOUD_MAX_BYTES") or 0)
    if limit and size(building) > limit:
        print("dcloud: the packages need more than", limit, "bytes; not kept", flush=True)
        sys.exit(97)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    open(os.path.join(building, ".dcloud-complete"), "w").close()
    try:
        os.rename(building, final)  # atomic; fails onto a complete environment another build made
    except OSError:
        if os.path.isfile(os.path.join(final, ".dcloud-complete")):
            print("dcloud: another server built", key, "first; using it", flush=True)
        else:  # something not published by an install sits there: it is no environment
            shutil.rmtree(final, ignore_errors=True)
            os.rename(building, final)
    report("built")
finally:
    shutil.rmtree(building, ignore_errors=True)
prune()
"""


def env_key(image: str, packages: Sequence[str], index_url: str | None, pip_options: Sequence[str]) -> str:
    """The environment's name: what decides pip's result, hashed (order of packages ignored)."""
    facts = {"image": image, "packages": sorted(packages), "index": index_url or "", "pip": list(pip_options)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def installer_argv(python: str, envs_dir: str, key: str, keep: int, pip_argv: Sequence[str]) -> list[str]:
    """The argv that makes (or reuses) environment ``key`` under ``envs_dir``."""
    return [python, "-c", INSTALLER, envs_dir, key, str(keep), "--", *pip_argv]


def outcome(reused: bool, packages: Sequence[str], where: str = "your home") -> str:
    """The progress page's line for what the installer did, every backend alike."""
    names = ", ".join(packages)
    if reused:
        return f"Reusing your packages: {names} (built at an earlier start; pip did not run)"
    return f"Built your packages into {where}: {names}; the next start with them reuses them"
