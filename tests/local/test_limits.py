"""CPU and memory limits of local servers: cgroup v2, systemd scopes, or plainly none."""

import os

from dcloud_spawner.local import limits


def fake_cgroup_root(tmp_path, controllers="cpuset cpu io memory pids"):
    (tmp_path / "cgroup.controllers").write_text(controllers + "\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return tmp_path


def test_cgroup_v2_group_gets_cpu_and_memory_limits(tmp_path):
    limiter = limits.detect(fake_cgroup_root(tmp_path))
    assert limiter.mode == "cgroup2" and limiter.enforced
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory\n"
    assert (tmp_path / "dcloud" / "cgroup.subtree_control").read_text() == "+cpu +memory\n"
    join = limiter.prepare("alice/train", cpu=1.5, memory=8 * 2**30)
    group = tmp_path / "dcloud" / "dcloud-alice_train"
    assert (group / "cpu.max").read_text() == "150000 100000\n"
    assert (group / "memory.max").read_text() == f"{8 * 2**30}\n"
    join()  # writes this process's "0" into cgroup.procs (a plain file here)
    assert (group / "cgroup.procs").read_text() == "0\n"
    assert limiter.wrap(["python"], "alice/train", 1.5, 1) == ["python"]


def test_without_cgroup_v2_or_systemd_nothing_is_claimed(tmp_path, monkeypatch):
    monkeypatch.setattr(limits.shutil, "which", lambda name: None)
    limiter = limits.detect(fake_cgroup_root(tmp_path, controllers="cpuset pids"))
    assert limiter.mode is None and not limiter.enforced
    assert limiter.reason.startswith("CPU and memory limits are not enforced on this machine")
    assert limiter.prepare("a/b", 1, 1) is None


def test_systemd_scope_wraps_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(limits.shutil, "which", lambda name: "/usr/bin/systemd-run")
    monkeypatch.setattr(limits.Path, "is_dir", lambda self: str(self) == "/run/systemd/system")
    limiter = limits.detect(tmp_path / "missing")
    assert limiter.mode == "systemd-run"
    argv = limiter.wrap(["python", "-m", "jupyterhub.singleuser"], "bob/", cpu=2, memory=2**30)
    assert argv[0] == "systemd-run" and argv[-4:] == ["--", "python", "-m", "jupyterhub.singleuser"]
    assert "--property=CPUQuota=200%" in argv and f"--property=MemoryMax={2**30}" in argv
    assert ("--user" in argv) == (os.geteuid() != 0)
