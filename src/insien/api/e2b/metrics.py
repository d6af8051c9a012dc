"""A sandbox's usage as E2B's `SandboxMetric`: CPU, memory and disk from the container's
cgroup and writable layer. CPU percent is over the time since the previous reading of that
sandbox; the first reading of a sandbox waits a quarter second for a second sample."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import trio

from ...runtime.base import Runtime
from ...sandboxes.sandbox import Sandbox

FIRST_INTERVAL = 0.25
KEPT = 1024
"""Previous readings kept (one per sandbox asked about; the oldest are forgotten first)."""


class MetricsSampler:
    def __init__(self, runtime: Runtime, disk_total: int) -> None:
        self._runtime = runtime
        self._disk_total = disk_total
        self._previous: dict[str, tuple[float, float]] = {}

    async def sample(self, sandbox: Sandbox) -> dict[str, Any]:
        usage = await self._runtime.usage(sandbox.container_id)
        now = time.time()
        if usage is not None and sandbox.id not in self._previous:
            # No earlier reading: take a second one a moment later, so the percentage is of
            # now and not of the sandbox's start (which a pooled sandbox did before its claim).
            self._previous[sandbox.id] = (now, usage.cpu_seconds)
            await trio.sleep(FIRST_INTERVAL)
            usage = await self._runtime.usage(sandbox.container_id)
            now = time.time()
        disk = await self._runtime.writable_size(sandbox.container_id)
        cpus = sandbox.options.resources.cpus
        if usage is None:
            cpu_pct, memory_used, memory_limit, cache = 0.0, 0, sandbox.options.resources.memory, 0
        else:
            since, before = self._previous.pop(sandbox.id, (sandbox.created_at.timestamp(), 0.0))
            self._previous[sandbox.id] = (now, usage.cpu_seconds)
            while len(self._previous) > KEPT:
                del self._previous[next(iter(self._previous))]
            elapsed = max(now - since, 1e-3)
            used = max(usage.cpu_seconds - before, 0.0)
            cpu_pct = min(100.0, 100.0 * used / (elapsed * max(cpus, 0.01)))
            memory_used, cache = usage.memory_used, usage.memory_cache
            memory_limit = min(
                usage.memory_limit or sandbox.options.resources.memory,
                sandbox.options.resources.memory,
            )
        moment = datetime.fromtimestamp(now, UTC)
        return {
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "timestampUnix": int(now),
            "cpuCount": max(1, math.ceil(cpus)),
            "cpuUsedPct": round(cpu_pct, 2),
            "memUsed": memory_used,
            "memTotal": memory_limit,
            "memCache": cache,
            "diskUsed": disk,
            "diskTotal": self._disk_total,
        }
