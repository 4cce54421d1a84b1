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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

ENVS_DIR = ".dcloud/envs"  # below the home directory
PIP_CACHE_DIR = ".dcloud/pip-cache"
COMPLETE = ".dcloud-complete"  # written last, inside the folder, before it is published
REUSED = "dcloud: reusing"  # the installer's first words when the environment exists

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
os.makedirs(envs, exist_ok=True)
building = tempfile.mkdtemp(prefix=".building-" + key + "-", dir=envs)
try:
    env = dict(os.environ, PIP_TARGET=building)
    code = subprocess.call(pip, env=env)
    if code != 0:
        sys.exit(code)
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
