"""``usable_cpus``: the CPUs this process may really use (affinity and cgroup quota), read from a
cgroup tree that ``tmp_path`` stands in for."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_cluster.master import cpus
from flask_cluster.master.cpus import cgroup_quota, own_cgroups, usable_cpus


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "_affinity_count", lambda: 8)


@pytest.fixture
def in_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Make ``/proc/self/cgroup`` say we live in the given cgroup; returns the cgroup root."""
    root = tmp_path / "cgroup"
    root.mkdir()

    def place(text: str) -> Path:
        proc = tmp_path / "proc-self-cgroup"
        proc.write_text(text)
        monkeypatch.setattr(cpus, "PROC_CGROUP", proc)
        return root

    place("0::/\n")
    return place


# -- cgroup v2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpu_max", "quota"), [
    ("max 100000\n", None),
    ("max", None),
    ("150000 100000\n", 2),  # 1.5 CPUs: rounded up
    ("100000 100000", 1),
    ("50000 100000", 1),  # half a CPU still gets one worker
    ("400000 100000", 4),
    ("250000 50000", 5),
    ("0 100000", None),
])
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, quota: int | None) -> None:
    write(tmp_path, "cpu.max", cpu_max)

    assert cgroup_quota(tmp_path) == quota


def test_cgroup_v2_wins_over_v1_files(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000")
    write(tmp_path, "cpu/cpu.cfs_quota_us", "200000")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")

    assert cgroup_quota(tmp_path) is None


# -- cgroup v1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cpu/", ""])
@pytest.mark.parametrize(("quota_us", "period_us", "quota"), [
    ("-1", "100000", None),  # no limit
    ("300000", "100000", 3),
    ("150000", "100000", 2),
    ("20000", "100000", 1),
])
def test_cgroup_v1_cfs_quota(tmp_path: Path, layout: str, quota_us: str, period_us: str,
                             quota: int | None) -> None:
    write(tmp_path, f"{layout}cpu.cfs_quota_us", quota_us + "\n")
    write(tmp_path, f"{layout}cpu.cfs_period_us", period_us + "\n")

    assert cgroup_quota(tmp_path) == quota


def test_cgroup_v1_without_period_is_no_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "200000")

    assert cgroup_quota(tmp_path) is None


def test_no_cgroup_files_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path) is None
    assert cgroup_quota(tmp_path / "missing") is None


# -- usable_cpus ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("eight_cpus")
def test_quota_below_affinity_limits(in_cgroup: Callable[[str], Path]) -> None:
    root = in_cgroup("0::/\n")
    write(root, "cpu.max", "150000 100000")

    assert usable_cpus(root) == 2


@pytest.mark.usefixtures("eight_cpus")
def test_affinity_below_quota_limits(in_cgroup: Callable[[str], Path]) -> None:
    root = in_cgroup("0::/\n")
    write(root, "cpu.max", "3200000 100000")  # 32 CPUs of quota, 8 we may run on

    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cpus")
def test_no_quota_uses_affinity(in_cgroup: Callable[[str], Path]) -> None:
    root = in_cgroup("0::/\n")
    write(root, "cpu.max", "max 100000")

    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cpus")
def test_quota_on_our_own_cgroup_counts(in_cgroup: Callable[[str], Path]) -> None:
    """A systemd unit's CPUQuota= sits on the service's cgroup, not on the root."""
    root = in_cgroup("0::/system.slice/app.service\n")
    write(root, "cgroup.controllers", "cpu memory")
    write(root, "cpu.max", "max 100000")
    write(root, "system.slice/cpu.max", "max 100000")
    write(root, "system.slice/app.service/cpu.max", "300000 100000")

    assert usable_cpus(root) == 3


@pytest.mark.usefixtures("eight_cpus")
def test_smallest_quota_up_the_tree_wins(in_cgroup: Callable[[str], Path]) -> None:
    root = in_cgroup("0::/kubepods/pod1/container\n")
    write(root, "cgroup.controllers", "cpu")
    write(root, "kubepods/cpu.max", "600000 100000")
    write(root, "kubepods/pod1/cpu.max", "200000 100000")  # the pod's limit binds
    write(root, "kubepods/pod1/container/cpu.max", "max 100000")

    assert usable_cpus(root) == 2


@pytest.mark.usefixtures("eight_cpus")
def test_cgroup_v1_own_cpu_cgroup(in_cgroup: Callable[[str], Path]) -> None:
    root = in_cgroup("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n")
    write(root, "cpu/cpu.cfs_quota_us", "-1")
    write(root, "cpu/cpu.cfs_period_us", "100000")
    write(root, "cpu/docker/abc/cpu.cfs_quota_us", "250000")
    write(root, "cpu/docker/abc/cpu.cfs_period_us", "100000")

    assert usable_cpus(root) == 3


def test_own_cgroups_parses_both_versions(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/user.slice/x.scope\n")

    assert own_cgroups(proc) == {"cpu": "/docker/abc", "": "/user.slice/x.scope"}
    assert own_cgroups(tmp_path / "missing") == {}


def test_own_cgroup_missing_from_the_tree_falls_back_to_the_root(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "100000 100000")

    assert cgroup_quota(tmp_path, {"": "/not/mounted/here"}) == 1


def test_at_least_one(in_cgroup: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "_affinity_count", lambda: 0)

    assert usable_cpus(in_cgroup("0::/\n")) == 1


def test_affinity_of_this_process(in_cgroup: Callable[[str], Path]) -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    assert usable_cpus(in_cgroup("0::/\n")) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_affinity_is_read_live(in_cgroup: Callable[[str], Path]) -> None:
    """A process pinned to fewer CPUs (taskset, a container's cpuset) gets fewer workers."""
    root = in_cgroup("0::/\n")
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(original)})
    try:
        assert usable_cpus(root) == 1
    finally:
        os.sched_setaffinity(0, original)
