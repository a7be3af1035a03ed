"""How many cores this process may use: the CPUs it may run on (``sched_getaffinity``),
bounded by a cgroup CPU quota (a container's ``--cpus``, a Kubernetes CPU limit), which
``os.cpu_count()`` ignores: a server sized by the host's 64 cores in a 2-CPU container
would run 64 processes on two CPUs' worth of time."""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")

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


#: how far below a process's other threads (a nice increment, 0-19) its background work runs:
#: index builds and merges yield the CPU to searches and writes, and take what they leave.
#: On 2 cores a build beside a search loop and an ingest raised the search p99 from 0.7 to
#: 4.7 ms; niced, 0.8 ms (docs/scale.md, "Searches while an ingest runs")
BACKGROUND_NICE = 10


def background_nice() -> int:
    """The nice increment of background threads: LAMINA_BUILD_NICE (0 keeps their priority),
    or ``BACKGROUND_NICE``."""
    value = os.environ.get("LAMINA_BUILD_NICE", "").strip()
    try:
        chosen = int(value) if value else BACKGROUND_NICE
    except ValueError:
        raise ValueError(f"LAMINA_BUILD_NICE must be an integer 0..19, not {value!r}") from None
    if not 0 <= chosen <= 19:
        raise ValueError(f"LAMINA_BUILD_NICE must be an integer 0..19, not {chosen}")
    return chosen


def niced(increment: int, work: Callable[[], T]) -> T:
    """``work()`` run on a thread of its own whose priority is lowered by ``increment`` (see
    ``run_in_background``; threads it starts inherit it), waited for; its result or its
    exception. The caller keeps its priority: an optimizer step holding the collection lock
    (writers and snapshots wait for it) must not be starved of the CPU by its own niceness."""
    if increment == 0:
        return work()
    outcome: list[Any] = []

    def run() -> None:
        run_in_background(increment)
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-build", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def run_in_background(increment: int) -> int:
    """Lower the calling thread's CPU priority by ``increment`` (``background_nice()``), and with it that of the
    threads it starts from now on (hnswlib's build threads): on Linux a nice value is per thread
    and inherited. Returns the thread's nice value after (unchanged elsewhere, or if refused)."""
    if not sys.platform.startswith("linux"):
        return 0  # elsewhere PRIO_PROCESS would name the whole process
    tid = threading.get_native_id()
    now = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
    except OSError:  # a sandbox that refuses it: the thread keeps its priority
        return now
    return os.getpriority(os.PRIO_PROCESS, tid)
