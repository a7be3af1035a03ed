"""How many cores this process may use: the CPUs it may run on (``sched_getaffinity``),
bounded by a cgroup CPU quota (a container's ``--cpus``, a Kubernetes CPU limit), which
``os.cpu_count()`` ignores: a server sized by the host's 64 cores in a 2-CPU container
would run 64 processes on two CPUs' worth of time."""

from __future__ import annotations

import math
import os
from pathlib import Path

#: where cgroup v2 keeps ``cpu.max`` and cgroup v1 its ``cpu/cpu.cfs_*_us`` pair
CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None when there
    is none (``max``, -1, or no cgroup files). ``root``: the cgroup file system."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, bounded by its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs keeps two processes busy part of the time); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpus()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
