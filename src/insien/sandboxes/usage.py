"""How much a sandbox uses: CPU, memory and pids from its container's cgroup (Docker's stats;
on a runtime without stats, Kubernetes', the agent reads the same counters from inside), disk
from its writable layer, and from its agent what Docker does not say (the cgroup's memory
high-water mark, how full /tmp is).

CPU percent is over the time since the previous reading of that sandbox; the first reading of a
sandbox waits a quarter second for a second sample, so no reading reports the sandbox's start
(which a pooled sandbox did before its claim).

**A history while someone looks.** The first reading of a sandbox (either front's
`GET /sandboxes/<id>/metrics`) starts sampling it every SERIES_INTERVAL seconds (E2B's cadence)
for as long as it lives and someone asked within WATCHED_FOR seconds; the last HISTORY_KEPT
readings (an hour) answer E2B's `?start=&end=` ranges. Sandboxes nobody asks about are never
sampled: a reading costs a Docker stats call (about a second of dockerd's time in a worker
thread, of which trio lends 40), a size query and an agent round trip, so 500 idle sandboxes
sampled every 5 s would keep ~100 calls in flight and starve the creates that need those
threads. At most SAMPLED_AT_MOST sandboxes are sampled at once (the least recently asked stop
first), and only the last KEPT sandboxes asked about keep a history.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ..operations.logs import long_lived_task
from ..runtime.base import FilesystemSnapshots, Runtime, Stats, Usage
from .sandbox import Sandbox, State, iso_timestamp

FIRST_INTERVAL = 0.25
KEPT = 512
"""Sandboxes whose previous reading (and history) is kept; the oldest looked at go first."""
SERIES_INTERVAL = 5.0
HISTORY_KEPT = 720
"""An hour of readings at SERIES_INTERVAL."""
RECENT = 60
"""Readings in the series Insien's own metrics answer carries."""
WATCHED_FOR = 3600.0
SAMPLED_AT_MOST = 64
AGENT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Reading:
    at: float
    """Seconds since the epoch."""
    cpu_count: int
    cpu_percent: float
    """Of the sandbox's CPU limit, since the previous reading."""
    cpu_seconds: float
    """CPU time used since the container started."""
    memory_bytes: int
    """Without the page cache."""
    memory_limit: int
    memory_cache: int
    memory_peak: int | None
    """The cgroup's high-water mark (page cache included), where the kernel keeps one."""
    disk_bytes: int
    """The writable layer (what the sandbox wrote outside tmpfs mounts)."""
    disk_limit: int
    """INSIEN_DISK_LIMIT, or 0 when the writable layer has no limit."""
    tmp_bytes: int | None
    """Used in /tmp (a tmpfs: counted in memory too, not on disk)."""
    tmp_limit: int | None
    pids: int

    def info(self) -> dict[str, Any]:
        return {
            "timestamp": iso_timestamp(datetime.fromtimestamp(self.at, UTC)),
            "cpuCount": self.cpu_count,
            "cpuPercent": self.cpu_percent,
            "cpuSeconds": round(self.cpu_seconds, 3),
            "memoryBytes": self.memory_bytes,
            "memoryLimit": self.memory_limit,
            "memoryCache": self.memory_cache,
            "memoryPeak": self.memory_peak,
            "diskBytes": self.disk_bytes,
            "diskLimit": self.disk_limit,
            "tmpBytes": self.tmp_bytes,
            "tmpLimit": self.tmp_limit,
            "pids": self.pids,
        }

    def point(self) -> dict[str, Any]:
        """One point of a series: what changes."""
        return {
            "timestamp": iso_timestamp(datetime.fromtimestamp(self.at, UTC)),
            "cpuPercent": self.cpu_percent,
            "memoryBytes": self.memory_bytes,
            "pids": self.pids,
            "diskBytes": self.disk_bytes,
            "tmpBytes": self.tmp_bytes,
        }


@dataclass
class _Watched:
    previous: tuple[float, float] | None = None
    """(when, CPU seconds) of the last reading, for the next CPU percent."""
    series: deque[Reading] = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))
    looked_at: float = 0.0
    sampling: bool = False
    peak: int = 0


def agent_counters(answer: dict[str, Any]) -> Usage | None:
    """The cgroup counters in an agent's `usageResponse`, if it sent them whole."""
    found = answer.get("cgroup")
    if not isinstance(found, dict):
        return None
    try:
        return Usage(
            cpu_seconds=float(found["cpuSeconds"]),
            cpus=float(found["cpus"]),
            memory_used=int(found["memoryUsed"]),
            memory_limit=int(found["memoryLimit"]),
            memory_cache=int(found["memoryCache"]),
            pids=int(found["pids"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


class UsageSampler:
    def __init__(
        self,
        runtime: Runtime,
        disk_limit: int,
        nursery: trio.Nursery | None,
        *,
        tmp_size: int | None = None,
    ) -> None:
        self._runtime = runtime
        self._disk_limit = disk_limit
        self._tmp_size = tmp_size
        """INSIEN_TMP_SIZE. Docker sizes the tmpfs so; a Kubernetes memory volume's filesystem
        says the node's memory (its sizeLimit is the kubelet's to enforce): the smaller wins."""
        self._nursery = nursery
        self._watched: OrderedDict[str, _Watched] = OrderedDict()

    def _entry(self, sandbox_id: str) -> _Watched:
        entry = self._watched.get(sandbox_id)
        if entry is None:
            entry = self._watched[sandbox_id] = _Watched()
            while len(self._watched) > KEPT:
                self._watched.popitem(last=False)
        self._watched.move_to_end(sandbox_id)
        return entry

    async def read(self, sandbox: Sandbox) -> Reading:
        """A reading now; keeps the sandbox sampled for a while (see the module's doc)."""
        entry = self._entry(sandbox.id)
        entry.looked_at = trio.current_time()
        reading = await self._sample(sandbox, entry)
        entry.series.append(reading)
        self._keep_sampled(sandbox, entry)
        return reading

    def series(self, sandbox_id: str) -> list[Reading]:
        """The recent readings (the last RECENT)."""
        entry = self._watched.get(sandbox_id)
        return list(entry.series)[-RECENT:] if entry is not None else []

    async def history(
        self, sandbox: Sandbox, start: float | None = None, end: float | None = None
    ) -> list[Reading]:
        """The readings kept whose whole second is within [start, end] (seconds since the
        epoch, either open). Asking keeps the sandbox sampled; a range that reaches now gets a
        reading now when none is being taken every SERIES_INTERVAL (the first time, or after
        nobody asked for WATCHED_FOR)."""
        now = time.time()
        entry = self._entry(sandbox.id)
        entry.looked_at = trio.current_time()
        newest = entry.series[-1].at if entry.series else None
        reaches_now = end is None or end >= now - SERIES_INTERVAL
        stale = newest is None or (not entry.sampling and now - newest >= SERIES_INTERVAL)
        if reaches_now and stale:
            entry.series.append(await self._sample(sandbox, entry))
        self._keep_sampled(sandbox, entry)
        return [
            r
            for r in entry.series
            if (start is None or int(r.at) >= start) and (end is None or int(r.at) <= end)
        ]

    def _keep_sampled(self, sandbox: Sandbox, entry: _Watched) -> None:
        """Sample the sandbox every SERIES_INTERVAL from now on; past SAMPLED_AT_MOST, the
        sandbox asked about least recently stops being sampled."""
        if entry.sampling or self._nursery is None or sandbox.state is State.ENDED:
            return
        sampled = [e for e in self._watched.values() if e.sampling and e.looked_at > -math.inf]
        if len(sampled) >= SAMPLED_AT_MOST:
            sampled[0].looked_at = -math.inf  # its task ends at its next tick
        entry.sampling = True
        self._nursery.start_soon(self._sample_while_watched, sandbox, entry)

    async def _sample_while_watched(self, sandbox: Sandbox, entry: _Watched) -> None:
        long_lived_task(sandbox.id, sandbox.owner or None)
        tick = trio.current_time()
        try:
            while True:
                # on a fixed grid: a slow reading does not stretch the cadence (a missed
                # tick is skipped)
                tick += SERIES_INTERVAL * max(
                    1, math.ceil((trio.current_time() - tick) / SERIES_INTERVAL)
                )
                await trio.sleep_until(tick)
                if sandbox.state is State.ENDED or self._watched.get(sandbox.id) is not entry:
                    return
                if trio.current_time() - entry.looked_at >= WATCHED_FOR:
                    return
                entry.series.append(await self._sample(sandbox, entry))
        finally:
            entry.sampling = False

    async def _agent_usage(self, sandbox: Sandbox) -> dict[str, Any]:
        if sandbox.state is not State.RUNNING or not sandbox.link.connected:
            return {}  # a paused agent answers nothing
        with trio.move_on_after(AGENT_TIMEOUT):
            answer = await sandbox.link.call({"type": "usage"})
            if answer.get("type") == "usageResponse":
                return answer
        return {}

    async def _counters(self, sandbox: Sandbox) -> tuple[Usage | None, dict[str, Any]]:
        """The runtime's cgroup reading, else the agent's; and the agent's answer."""
        runtime = self._runtime
        usage = await runtime.usage(sandbox.container_id) if isinstance(runtime, Stats) else None
        agent = await self._agent_usage(sandbox)
        if usage is None:
            usage = agent_counters(agent)
        return usage, agent

    async def _sample(self, sandbox: Sandbox, entry: _Watched) -> Reading:
        usage, agent = await self._counters(sandbox)
        now = time.time()
        if usage is not None and entry.previous is None:
            entry.previous = (now, usage.cpu_seconds)
            await trio.sleep(FIRST_INTERVAL)
            usage, agent = await self._counters(sandbox)
            now = time.time()
        runtime = self._runtime
        # The writable layer is what a snapshot would save: a runtime without one reports 0.
        disk = (
            await runtime.writable_size(sandbox.container_id)
            if isinstance(runtime, FilesystemSnapshots)
            else 0
        )
        limits = sandbox.options.resources
        cpu_percent, cpu_seconds, memory, limit, cache, pids = 0.0, 0.0, 0, limits.memory, 0, 0
        if usage is not None:
            since, before = entry.previous or (now, usage.cpu_seconds)
            entry.previous = (now, usage.cpu_seconds)
            used = max(usage.cpu_seconds - before, 0.0)
            elapsed = max(now - since, 1e-3)
            cpu_percent = min(100.0, 100.0 * used / (elapsed * max(limits.cpus, 0.01)))
            cpu_seconds = usage.cpu_seconds
            memory, cache, pids = usage.memory_used, usage.memory_cache, usage.pids
            limit = min(usage.memory_limit or limits.memory, limits.memory)
        peak = agent.get("memoryPeak")
        entry.peak = max(entry.peak, memory + cache, peak if isinstance(peak, int) else 0)
        tmp_bytes, tmp_limit = agent.get("tmpBytes"), agent.get("tmpLimit")
        if isinstance(tmp_limit, int) and self._tmp_size:
            tmp_limit = min(tmp_limit, self._tmp_size)
        return Reading(
            at=now,
            cpu_count=max(1, math.ceil(limits.cpus)),
            cpu_percent=round(cpu_percent, 2),
            cpu_seconds=cpu_seconds,
            memory_bytes=memory,
            memory_limit=limit,
            memory_cache=cache,
            memory_peak=entry.peak or None,
            disk_bytes=disk,
            disk_limit=self._disk_limit,
            tmp_bytes=tmp_bytes if isinstance(tmp_bytes, int) else None,
            tmp_limit=tmp_limit if isinstance(tmp_limit, int) else None,
            pids=pids,
        )

    def forget(self, sandbox_id: str) -> None:
        self._watched.pop(sandbox_id, None)
