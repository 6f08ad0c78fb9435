"""How many CPUs this process may really use: affinity and cgroup quota, not the machine's count."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The smaller of the CPUs in our scheduler affinity and the cgroup CPU quota, at least 1."""
    counts = [_affinity_count()]
    quota = cgroup_quota(cgroup_root)
    if quota is not None:
        counts.append(quota)
    return max(1, min(counts))


def _affinity_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_quota(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us`` limit, rounded up."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return _cpus(int(quota), int(period))
        return None
    v1_quota = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    v1_period = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if v1_quota and v1_period and int(v1_quota) > 0:
        return _cpus(int(v1_quota), int(v1_period))
    return None


def _cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
