"""Lifecycle events: every change of a sandbox's life (and every refused create) as a small
record with an id, kept in a bounded in-memory log that `GET /events` follows and webhooks
deliver from.

Each tenant has its own history, its own sequence and its own wakeups, so one tenant's traffic
never evicts, numbers or wakes another's. Ids are `<epoch>-<n>`: `n` counts
the tenant's own events within one run of the server and `epoch` names the run, so a client
resuming with a `Last-Event-ID` from before a restart is given everything still kept rather than
nothing. A client that fell further behind than the log keeps is told how many it missed (a
`gap`), never silently skipped.

Bounds: each tenant keeps at most `per_tenant` events (default a tenant's share,
`kept // 10`, so 1,000 of the default 10,000) and all tenants together at most `kept`; past
that, the tenant holding the most gives up its oldest. A tenant's last
`min(per_tenant, kept // tenants)` events are therefore never evicted by what others publish.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

CREATED = "sandbox.created"
READY = "sandbox.ready"
PAUSED = "sandbox.paused"
RESUMED = "sandbox.resumed"
ENDED = "sandbox.ended"
SNAPSHOT = "sandbox.snapshot"
QUOTA_REFUSED = "quota.refused"
EVENT_TYPES = (CREATED, READY, PAUSED, RESUMED, ENDED, SNAPSHOT, QUOTA_REFUSED)

PER_TENANT_SHARE = 10
"""By default one tenant may hold a tenth of the log: ten busy tenants fill it exactly."""


@dataclass(frozen=True)
class Event:
    seq: int
    """The event's number in its tenant's own sequence (1, 2, ... within one run)."""
    epoch: str
    type: str
    tenant: str
    sandbox_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.seq}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "tenant": self.tenant,
            "sandboxId": self.sandbox_id,
            "details": self.details,
        }


@dataclass(frozen=True)
class Gap:
    """Events of the follower's tenant it will never see: it fell behind what is kept."""

    missed: int


class _TenantLog:
    """One tenant's history, sequence and wakeup."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.seq = 0
        self.changed = trio.Event()
        """Set (and replaced) by each of this tenant's publishes, and nobody else's."""

    def oldest(self) -> int:
        """The sequence number of the oldest event kept (one past the last when none are)."""
        return self.events[0].seq if self.events else self.seq + 1


class EventLog:
    """Each tenant's last events, for that tenant's followers; publishing never blocks."""

    def __init__(self, kept: int = 10_000, per_tenant: int | None = None) -> None:
        self.epoch = secrets.token_hex(4)
        self.kept = kept
        """Events kept for all tenants together (INSIEN_EVENTS_KEPT)."""
        self.per_tenant = min(kept, per_tenant or max(100, kept // PER_TENANT_SHARE))
        """Events kept for any one tenant."""
        self._tenants: dict[str, _TenantLog] = {}
        self._held = 0
        self._published = 0
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def published(self) -> int:
        """Events published since the server started, all tenants together (a metric)."""
        return self._published

    @property
    def held(self) -> int:
        """Events kept now, all tenants together (at most `kept`)."""
        return self._held

    def kept_for(self, tenant: str) -> int:
        """Events kept now for `tenant` (at most `per_tenant`)."""
        log = self._tenants.get(tenant)
        return len(log.events) if log else 0

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Called synchronously with each event as it is published (it must not block)."""
        self._listeners.append(listener)

    def _log(self, tenant: str) -> _TenantLog:
        log = self._tenants.get(tenant)
        if log is None:
            log = self._tenants[tenant] = _TenantLog()
        return log

    def publish(
        self, kind: str, tenant: str, sandbox_id: str | None = None, **details: Any
    ) -> Event:
        log = self._log(tenant)
        log.seq += 1
        self._published += 1
        event = Event(log.seq, self.epoch, kind, tenant, sandbox_id, details)
        log.events.append(event)
        self._held += 1
        if len(log.events) > self.per_tenant:
            log.events.popleft()
            self._held -= 1
        if self._held > self.kept:
            self._evict(log)
        log.changed.set()
        log.changed = trio.Event()
        for listener in self._listeners:
            listener(event)
        return event

    def _evict(self, publisher: _TenantLog) -> None:
        """Over the total bound: the tenant holding the most (the publisher on a tie) gives up
        its oldest, so a tenant within its fair share keeps its history whatever others do."""
        victim = publisher
        for log in self._tenants.values():
            if len(log.events) > len(victim.events):
                victim = log
        victim.events.popleft()
        self._held -= 1

    def _start_after(self, log: _TenantLog, last_id: str | None) -> int:
        """The tenant's sequence number after which a follower resumes."""
        if last_id is None:
            return log.seq  # from now on
        epoch, _, number = last_id.partition("-")
        if epoch != self.epoch or not number.isdigit():
            return 0  # another run's id (or none we gave): everything still kept
        return min(int(number), log.seq)

    def follow(
        self, tenant: str, last_id: str | None = None, idle: float = math.inf
    ) -> AsyncGenerator[Event | Gap | None]:
        """The tenant's events after `last_id` (or from this call on), then each as it comes;
        None after each `idle` seconds without one (a stream's keep-alive). Close it
        (`aclosing`) when done."""
        log = self._log(tenant)
        return self._follow(log, self._start_after(log, last_id), idle)

    async def _follow(
        self, log: _TenantLog, after: int, idle: float
    ) -> AsyncGenerator[Event | Gap | None]:
        while True:
            changed = log.changed
            # A tenant's sequence numbers in its history are consecutive: the first unseen is
            # found by index, computed afresh each time (the history may have moved meanwhile).
            oldest = log.oldest()
            if after + 1 < oldest:
                missed = oldest - 1 - after
                after = oldest - 1
                yield Gap(missed)
            elif after >= log.seq:
                with trio.move_on_after(idle) as quiet:
                    await changed.wait()
                if quiet.cancelled_caught:
                    yield None
            else:
                event = log.events[after + 1 - oldest]
                after = event.seq
                yield event
