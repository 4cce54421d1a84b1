"""Package environments that persist on the user's home volume, one per set of packages.

A set of extra packages is installed once into ``<home>/.dcloud/envs/<key>/``, where the key
is a hash of everything that decides what pip would install: the environment's image, the
sorted requirement specifiers, the index URL and the admin's pip options. A later start with
the same key runs no pip at all; a changed set builds a new environment, and the oldest ones
beyond the catalog's ``storage.package_environments`` are removed, never one a server uses.

The installer below is the same for every backend (the Kubernetes init container, the local
backend's install process). It never lets a half-built environment be used, and two servers
of one user building the same set at once never corrupt it: pip installs into a fresh
temporary folder beside the final one, which is published by one ``rename`` only once
complete; a rename onto an existing environment fails (the other build won) and the spare
copy is dropped. Folders of builds that died half-way are removed by later installs.

Environments in use. The user's servers share the folder (named servers of the local backend;
on Kubernetes, servers of a site that shares one home claim), so an install must never prune
an environment another server runs on. Each start that uses an environment has a fresh random
token and its server a slot (its name); the installer writes ``.in-use/<slot>`` = ``<token>
<key>`` before it looks for the environment, replacing the slot's earlier marker (a server
runs on one environment at a time). Prune keeps every environment a marker names, except for
markers whose token the hub lists in ``DCLOUD_ENDED``: the tokens of the user's other servers'
starts that are over (the server stopped, or runs without packages now), which the hub keeps
in each spawner's state across stops and hub restarts (``hub/package_marks.py``); those
markers are deleted. Nothing here reads a clock: a token is listed only after its start has
ended, and tokens never repeat, so a marker written after the hub made its list (a server that
started meanwhile, a pod that waited in Kueue's line for minutes) is always kept. Marking and
looking for the environment, and choosing and moving aside what to prune, each happen under a
``flock`` of ``.lock``, so no prune takes an environment between another start's look and its
marker (a file system without locks leaves only that short window open). What stays beyond
``keep`` is bounded by one environment per server: a stopped server's marker goes at the next
install of another of the user's servers, a deleted named server's when the local hub deletes
it (on Kubernetes, when a server of that name starts again). Which unused environments are
the newest ``keep`` is still told by when each was last built or reused (the time of its
``.dcloud-complete``), which decides only what stays longest, never whether one in use goes.

Its code is a constant: user input reaches it only as argv after ``--`` (pip's requirement
specifiers, as :meth:`Plan.pip_install_command` builds them), never as code.

The installer reports ``built <key>`` or ``reused <key>`` to ``DCLOUD_INSTALL_REPORT`` (a path:
Kubernetes' termination message) or ``DCLOUD_INSTALL_REPORT_FD`` (an inherited descriptor:
the local hub's pipe, which an installer running as another user could not open by path).

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
from collections.abc import Iterable, Sequence
from urllib.parse import quote

ENVS_DIR = ".dcloud/envs"  # below the home directory
PIP_CACHE_DIR = ".dcloud/pip-cache"
COMPLETE = ".dcloud-complete"  # written last, inside the folder, before it is published
REUSED = "dcloud: reusing"  # the installer's first words when the environment exists
TOO_BIG = 97  # the installer's exit status for a build over DCLOUD_MAX_BYTES (pip never exits so)
IN_USE = ".in-use"  # the folder of the servers' markers, inside ENVS_DIR
LOCK = ".lock"  # inside ENVS_DIR: held while an installer marks and looks, or chooses what to prune

# argv: python -c INSTALLER ENVS_DIR KEY KEEP -- PIP_ARGV...
INSTALLER = r"""
import contextlib, fcntl, os, shutil, subprocess, sys, tempfile, time
envs, key, keep, sep, pip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
assert sep == "--" and pip
final = os.path.join(envs, key)
marks = os.path.join(envs, ".in-use")
slot, token = os.environ.get("DCLOUD_SERVER", ""), os.environ.get("DCLOUD_START", "")
assert not slot or ("/" not in slot and not slot.startswith(".") and token.isalnum())
def report(how):
    # where the backend reads how it went (Kubernetes: the container's termination message)
    if os.environ.get("DCLOUD_INSTALL_REPORT"):
        with open(os.environ["DCLOUD_INSTALL_REPORT"], "w") as out:
            out.write(how + " " + key)
    if os.environ.get("DCLOUD_INSTALL_REPORT_FD"):
        os.write(int(os.environ["DCLOUD_INSTALL_REPORT_FD"]), (how + " " + key).encode())
@contextlib.contextmanager
def locked():
    # one installer at a time marks and looks, or chooses what to prune
    fd = os.open(os.path.join(envs, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: the markers alone
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
def mark():
    # this server runs on `key` from now on: its slot's marker, replaced in one rename
    if slot:
        os.makedirs(marks, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".", dir=marks)
        with os.fdopen(fd, "w") as out:
            out.write(token + " " + key)
        os.replace(path, os.path.join(marks, slot))
def in_use():
    # the keys named by markers of starts not over (and this one's); ended starts' markers go
    ended, used = set(os.environ.get("DCLOUD_ENDED", "").split()), {key}
    for name in os.listdir(marks) if os.path.isdir(marks) else []:
        path = os.path.join(marks, name)
        try:
            with open(path) as f:
                words = f.read().split()
        except OSError:
            continue
        # a name with a dot: half-written by an installer that died (writers hold the lock)
        if name.startswith(".") or (words and words[0] in ended):
            with contextlib.suppress(OSError):
                os.remove(path)
        elif len(words) == 2:
            used.add(words[1])
    return used
def prune():
    # the newest `keep` environments stay, and every one in use; builds dead for an hour go.
    # What goes is renamed aside under the lock and removed after it: a long walk holds no start
    done, gone = [], []
    with locked():
        used = in_use()
        for name in os.listdir(envs):
            path = os.path.join(envs, name)
            if name.startswith(".building-"):
                if time.time() - os.lstat(path).st_mtime > 3600:
                    gone.append(name)
            elif os.path.isfile(os.path.join(path, ".dcloud-complete")):
                done.append((os.stat(os.path.join(path, ".dcloud-complete")).st_mtime, name))
        gone += [name for _, name in sorted(done, reverse=True)[keep:] if name not in used]
        for name in gone:
            with contextlib.suppress(OSError):
                os.rename(os.path.join(envs, name), os.path.join(envs, ".pruning-" + os.urandom(6).hex()))
    for name in os.listdir(envs):  # this prune's, and any a killed one left
        if name.startswith(".pruning-"):
            shutil.rmtree(os.path.join(envs, name), ignore_errors=True)
os.makedirs(envs, exist_ok=True)
with locked():
    mark()  # before the look: a prune after it keeps this environment
    reused = os.path.isfile(os.path.join(final, ".dcloud-complete"))
    if reused:
        os.utime(os.path.join(final, ".dcloud-complete"))  # the most recently used stays longest
if reused:
    print("dcloud: reusing", key, flush=True)
    report("reused")
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


def slot(server_name: str) -> str:
    """The marker's file name for a server (the default server's name is empty)."""
    quoted = quote(server_name, safe="")
    if len(quoted) > 200:  # a file name has at most 255 bytes
        quoted = hashlib.sha256(server_name.encode()).hexdigest()
    return f"server-{quoted}"


def marker_env(server_name: str, token: str, ended: Iterable[str]) -> dict[str, str]:
    """The installer's environment for a start that marks its environment as in use under
    ``token``, and drops the markers of the ``ended`` starts."""
    return {"DCLOUD_SERVER": slot(server_name), "DCLOUD_START": token, "DCLOUD_ENDED": " ".join(ended)}


def outcome(reused: bool, packages: Sequence[str], where: str = "your home") -> str:
    """The progress page's line for what the installer did, every backend alike."""
    names = ", ".join(packages)
    if reused:
        return f"Reusing your packages: {names} (built at an earlier start; pip did not run)"
    return f"Built your packages into {where}: {names}; the next start with them reuses them"
