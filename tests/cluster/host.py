"""What a real kubelet and its CNI plugins change on the host, recorded before and put back after.

The kubelet sets kernel sysctls (``kernel.panic``, ``kernel.panic_on_oops``,
``vm.overcommit_memory``), creates iptables chains (``KUBE-FIREWALL``, canaries), the CNI bridge
plugin turns on ``net.ipv4.ip_forward``, and a few directories appear at fixed host paths whatever
the configuration says. A test harness must leave the machine as it found it, so ``record`` writes
all of that to a JSON file in the run directory before anything starts, and ``restore`` undoes
exactly the difference: it only removes chains and directories that were not there before, so a
second cluster running beside this one keeps what it relies on.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "net.ipv4.ip_forward")
# Fixed host paths the kubelet (container log links), the runc shim (socket dir) and libcni
# (result cache) create regardless of their configured roots.
# Deepest first: a parent that existed may have gained a child that did not.
HOST_DIRS = (
    "/var/log/containers",
    "/run/containerd/s",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
)
# Chains only kubelets and CNI plugins create; others are never touched.
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES = (("iptables", "iptables-save"), ("ip6tables", "ip6tables-save"))
NFT_FAMILY = {"iptables": "ip", "ip6tables": "ip6"}


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    return {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS}


def _save(save_cmd: str) -> str:
    try:
        return subprocess.run([save_cmd], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""  # no such family or tool: nothing to record or restore


def chains(save_cmd: str) -> dict[str, list[str]]:
    """Table -> chain names, as ``iptables-save`` lists them."""
    found: dict[str, list[str]] = {}
    table = ""
    for line in _save(save_cmd).splitlines():
        if line.startswith("*"):
            table = line[1:]
            found.setdefault(table, [])
        elif line.startswith(":") and table:
            found[table].append(line[1:].split()[0])
    return found


@dataclass
class HostRecord:
    """The host state before the node started."""

    sysctls: dict[str, str] = field(default_factory=dict)
    chains: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # tool -> table -> chains
    existing_dirs: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostRecord:
        return cls(
            sysctls=read_sysctls(),
            chains={tool: chains(save) for tool, save in IPTABLES},
            existing_dirs=[d for d in HOST_DIRS if Path(d).exists()],
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> HostRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def record(path: Path) -> HostRecord:
    """Record the host state into ``path`` unless a record is already there (a node that is
    restarted inside the same cluster must not record what the first start changed)."""
    existing = HostRecord.load(path)
    if existing is not None:
        return existing
    taken = HostRecord.take()
    taken.save(path)
    return taken


def _remove_new_chains(tool: str, save_cmd: str, before: dict[str, list[str]]) -> list[str]:
    """Delete kubelet/CNI chains absent from ``before``: first every rule jumping to them, then
    the chains themselves. Returns ``table/chain`` of what was removed."""
    removed: list[str] = []
    now = chains(save_cmd)
    for table, names in now.items():
        new = {c for c in names if c.startswith(CHAIN_PREFIXES) and c not in before.get(table, [])}
        if not new:
            continue
        rules = [line for line in _save_table(save_cmd, table) if line.startswith("-A ")]
        for rule in rules:
            words = shlex.split(rule)
            chain, target = words[1], _target(words)
            if target in new and chain not in new:
                subprocess.run([tool, "-t", table, "-D", chain, *words[2:]], capture_output=True, check=False)
        for chain in sorted(new):
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in sorted(new):
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True, check=False)
            removed.append(f"{tool}:{table}/{chain}")
    return removed


def _remove_new_tables(tool: str, save_cmd: str, before: dict[str, list[str]]) -> list[str]:
    """With the nf_tables backend, creating a chain also creates its table (filter, nat, ...),
    which outlives the chain: delete a table that was not there before once it holds no rule."""
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout
    if "nf_tables" not in version or shutil.which("nft") is None:
        return []
    removed = []
    for table in chains(save_cmd):
        if table in before or any(line.startswith("-A ") for line in _save_table(save_cmd, table)):
            continue
        deleted = subprocess.run(["nft", "delete", "table", NFT_FAMILY[tool], table], capture_output=True, check=False)
        if deleted.returncode == 0:
            removed.append(f"{tool}:{table}")
    return removed


def _save_table(save_cmd: str, table: str) -> list[str]:
    try:
        out = subprocess.run([save_cmd, "-t", table], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.splitlines()


def _target(words: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in words:
            return words[words.index(flag) + 1]
    return None


def _remove_if_empty_tree(path: Path) -> bool:
    """Remove ``path`` and its subdirectories if no file is left anywhere inside; never files."""
    if not path.is_dir() or path.is_symlink():
        return False
    empty = all(_remove_if_empty_tree(child) for child in path.iterdir())
    if empty:
        try:
            path.rmdir()
        except OSError:
            return False
    return empty


def restore(path: Path) -> list[str]:
    """Put back what ``record`` saw and delete the record. Returns what it changed, in words."""
    before = HostRecord.load(path)
    if before is None:
        return []
    changed: list[str] = []
    for name, value in before.sysctls.items():
        if _sysctl_path(name).read_text().strip() != value:
            _sysctl_path(name).write_text(value)
            changed.append(f"{name}={value}")
    for tool, save in IPTABLES:
        changed += _remove_new_chains(tool, save, before.chains.get(tool, {}))
        changed += _remove_new_tables(tool, save, before.chains.get(tool, {}))
    for directory in HOST_DIRS:
        if directory not in before.existing_dirs and _remove_if_empty_tree(Path(directory)):
            changed.append(f"rmdir {directory}")
    path.unlink(missing_ok=True)
    return changed
