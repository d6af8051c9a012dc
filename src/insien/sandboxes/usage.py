"""How much a sandbox uses right now: CPU, memory and pids from its container's cgroup, disk
from its writable layer. CPU percent is over the time since the previous reading of that
sandbox; the first reading of a sandbox waits a quarter second for a second sample, so no
reading reports the sandbox's start (which a pooled sandbox did before its claim)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from ..runtime.base import Runtime
from .sandbox import Sandbox, iso_timestamp

FIRST_INTERVAL = 0.25
KEPT = 1024
"""Previous readings kept (one per sandbox asked about; the oldest are forgotten first)."""


@dataclass(frozen=True)
class Reading:
    at: float
    """Seconds since the epoch."""
    cpu_count: int
    cpu_percent: float
    """Of the sandbox's CPU limit, since the previous reading."""
    memory_bytes: int
    """Without the page cache."""
    memory_limit: int
    memory_cache: int
    disk_bytes: int
    """The writable layer (what the sandbox wrote outside tmpfs mounts)."""
    disk_limit: int
    """INSIEN_DISK_LIMIT, or 0 when the writable layer has no limit."""
    pids: int

    def info(self) -> dict[str, Any]:
        return {
            "timestamp": iso_timestamp(datetime.fromtimestamp(self.at, UTC)),
            "cpuCount": self.cpu_count,
            "cpuPercent": self.cpu_percent,
            "memoryBytes": self.memory_bytes,
            "memoryLimit": self.memory_limit,
            "memoryCache": self.memory_cache,
            "diskBytes": self.disk_bytes,
            "diskLimit": self.disk_limit,
            "pids": self.pids,
        }


class UsageSampler:
    def __init__(self, runtime: Runtime, disk_limit: int) -> None:
        self._runtime = runtime
        self._disk_limit = disk_limit
        self._previous: dict[str, tuple[float, float]] = {}

    async def read(self, sandbox: Sandbox) -> Reading:
        usage = await self._runtime.usage(sandbox.container_id)
        now = time.time()
        if usage is not None and sandbox.id not in self._previous:
            self._previous[sandbox.id] = (now, usage.cpu_seconds)
            await trio.sleep(FIRST_INTERVAL)
            usage = await self._runtime.usage(sandbox.container_id)
            now = time.time()
        disk = await self._runtime.writable_size(sandbox.container_id)
        limits = sandbox.options.resources
        cpu_percent, memory, limit, cache, pids = 0.0, 0, limits.memory, 0, 0
        if usage is not None:
            since, before = self._previous.pop(sandbox.id, (now, usage.cpu_seconds))
            self._previous[sandbox.id] = (now, usage.cpu_seconds)
            while len(self._previous) > KEPT:
                del self._previous[next(iter(self._previous))]
            used = max(usage.cpu_seconds - before, 0.0)
            elapsed = max(now - since, 1e-3)
            cpu_percent = min(100.0, 100.0 * used / (elapsed * max(limits.cpus, 0.01)))
            memory, cache, pids = usage.memory_used, usage.memory_cache, usage.pids
            limit = min(usage.memory_limit or limits.memory, limits.memory)
        return Reading(
            at=now,
            cpu_count=max(1, math.ceil(limits.cpus)),
            cpu_percent=round(cpu_percent, 2),
            memory_bytes=memory,
            memory_limit=limit,
            memory_cache=cache,
            disk_bytes=disk,
            disk_limit=self._disk_limit,
            pids=pids,
        )

    def forget(self, sandbox_id: str) -> None:
        self._previous.pop(sandbox_id, None)
