"""How many CPUs this process may really use: affinity and cgroup quota, not the machine's count."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The smaller of the CPUs in our scheduler affinity and the cgroup CPU quota, at least 1."""
    counts = [_affinity_count()]
    quota = cgroup_quota(cgroup_root, own_cgroups(PROC_CGROUP))
    if quota is not None:
        counts.append(quota)
    return max(1, min(counts))


def _affinity_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup paths from ``/proc/self/cgroup``: the v2 path under ``""`` and the
    v1 ``cpu`` controller's path under ``"cpu"``."""
    paths: dict[str, str] = {}
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        _hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            paths[""] = path
        elif "cpu" in controllers.split(","):
            paths["cpu"] = path
    return paths


def cgroup_quota(root: Path = CGROUP_ROOT, own: dict[str, str] | None = None) -> int | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us`` limit, rounded up.

    The quota of our own cgroup and of every ancestor up to ``root`` counts (a systemd unit's
    ``CPUQuota=`` sits on the service's cgroup, not on the root); the smallest wins.
    """
    own = own or {}
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():  # unified (v2)
        return _smallest(_v2_quota(directory) for directory in _lineage(root, own.get("", "/")))
    v1_root = root / "cpu" if (root / "cpu").is_dir() else root
    return _smallest(_v1_quota(directory) for directory in _lineage(v1_root, own.get("cpu", "/")))


def _lineage(root: Path, path: str) -> list[Path]:
    """``root/path`` and its ancestors down to ``root``, those that exist."""
    directory = root / path.strip("/")
    found = []
    while True:
        if directory.is_dir():
            found.append(directory)
        if directory == root or root not in directory.parents:
            break
        directory = directory.parent
    return found


def _v2_quota(directory: Path) -> int | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return _cpus(int(quota), int(period))


def _v1_quota(directory: Path) -> int | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    if quota and period:
        return _cpus(int(quota), int(period))
    return None


def _smallest(quotas: Iterable[int | None]) -> int | None:
    return min((quota for quota in quotas if quota is not None), default=None)


def _cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
