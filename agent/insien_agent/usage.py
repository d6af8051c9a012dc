"""`usage`: what the server cannot read from Docker's stats: the sandbox's peak memory (its
cgroup's high-water mark) and how full its /tmp is (a tmpfs: not in the writable layer)."""

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
    }
