"""Facts about the machine that decide defaults: how many cores this process may use."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_memory", "fsync_path", "private_memory", "usable_cpu_count"]


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (a rename in it) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this process's cgroup, rounded up, or None if unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        pass
    return None


def usable_cpu_count() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def _kib_fields(path: Path, names: tuple[str, ...]) -> int | None:
    """The sum of ``names`` (lines ``Name:  123 kB``) in a /proc file, in bytes; None
    where the file is missing (not Linux) or lacks them."""
    try:
        text = path.read_text()
    except OSError:
        return None
    total, found = 0, False
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in names:
            total += int(rest.split()[0]) * 1024
            found = True
    return total if found else None


def available_memory() -> int | None:
    """Bytes the kernel says could be allocated without swapping (MemAvailable)."""
    return _kib_fields(Path("/proc/meminfo"), ("MemAvailable",))


def private_memory(pid: int) -> int | None:
    """Bytes only process ``pid`` holds (its private pages: what another one like it
    would cost; shared memory and shared libraries excluded)."""
    return _kib_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Private_Clean", "Private_Dirty"))
