"""`usage`: what the server cannot read from Docker's stats: the sandbox's peak memory (its
cgroup's high-water mark) and how full its /tmp is (a tmpfs: not in the writable layer); and
the cgroup's counters as the container sees them, for a runtime whose API has no stats
(Kubernetes without metrics-server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .context import Request

_PEAK_SOURCES = (
    Path("/sys/fs/cgroup/memory.peak"),  # cgroup v2 (Linux 5.19+)
    Path("/sys/fs/cgroup/memory/memory.max_usage_in_bytes"),  # cgroup v1
)


def memory_peak() -> int | None:
    for source in _PEAK_SOURCES:
        try:
            return int(source.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _number(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.isdigit() else None


def _stat_field(text: str | None, name: str) -> int:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def cgroup_counters() -> dict[str, Any] | None:
    """CPU seconds, CPUs allowed, memory (without the inactive page cache, as Docker's stats
    count it), its limit and the pids of this container's cgroup, v2 or v1; None if neither."""
    online = os.cpu_count() or 1
    if (CGROUP / "cgroup.controllers").exists():  # v2: one hierarchy
        usec = _stat_field(_read(CGROUP / "cpu.stat"), "usage_usec")
        quota, _, period = (_read(CGROUP / "cpu.max") or "max").partition(" ")
        cpus = int(quota) / int(period) if quota.isdigit() and period.isdigit() else online
        current = _number(CGROUP / "memory.current")
        cache = _stat_field(_read(CGROUP / "memory.stat"), "inactive_file")
        limit = _number(CGROUP / "memory.max") or 0
        pids = _number(CGROUP / "pids.current")
        cpu_seconds = usec / 1e6
    else:
        nanos = _number(CGROUP / "cpuacct" / "cpuacct.usage")
        quota_text = _read(CGROUP / "cpu" / "cpu.cfs_quota_us") or "-1"
        period_number = _number(CGROUP / "cpu" / "cpu.cfs_period_us") or 0
        quota_number = int(quota_text) if quota_text.lstrip("-").isdigit() else -1
        cpus = quota_number / period_number if quota_number > 0 and period_number else online
        current = _number(CGROUP / "memory" / "memory.usage_in_bytes")
        cache = _stat_field(_read(CGROUP / "memory" / "memory.stat"), "inactive_file")
        limit = _number(CGROUP / "memory" / "memory.limit_in_bytes") or 0
        pids = _number(CGROUP / "pids" / "pids.current")
        if nanos is None:
            return None
        cpu_seconds = nanos / 1e9
    if current is None:
        return None
    return {
        "cpuSeconds": cpu_seconds,
        "cpus": min(float(cpus), float(online)),
        "memoryUsed": max(0, current - cache),
        "memoryLimit": limit,
        "memoryCache": cache,
        "pids": pids or 0,
    }


def folder_use(path: str) -> tuple[int, int] | None:
    """(used, size) in bytes of the filesystem holding `path`."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return (info.f_blocks - info.f_bfree) * info.f_frsize, info.f_blocks * info.f_frsize


async def handle_usage(req: Request) -> dict[str, Any]:
    tmp = folder_use("/tmp")
    return {
        "type": "usageResponse",
        "memoryPeak": memory_peak(),
        "tmpBytes": tmp[0] if tmp else None,
        "tmpLimit": tmp[1] if tmp else None,
        "cgroup": cgroup_counters(),
    }
