"""Lifecycle events: every change of a sandbox's life (and every refused create) as a small
record with an id, kept in a bounded in-memory log that `GET /events` follows and webhooks
deliver from.

Ids are `<epoch>-<n>`: `n` counts up within one run of the server and `epoch` names the run,
so a client resuming with a `Last-Event-ID` from before a restart is given everything still
kept rather than nothing. A client that fell further behind than the log keeps is told how many
it missed (a `gap`), never silently skipped.
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


@dataclass(frozen=True)
class Event:
    seq: int
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
    """Events the follower will never see: it fell behind the log's bound. (How many is not
    said: the log is shared by every tenant.)"""


class EventLog:
    """The last `kept` events, for followers of every tenant; publishing never blocks."""

    def __init__(self, kept: int = 10_000) -> None:
        self.epoch = secrets.token_hex(4)
        self._events: deque[Event] = deque(maxlen=kept)
        self._seq = 0
        self._changed = trio.Event()
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def published(self) -> int:
        """Events published since the server started."""
        return self._seq

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Called synchronously with each event as it is published (it must not block)."""
        self._listeners.append(listener)

    def publish(
        self, kind: str, tenant: str, sandbox_id: str | None = None, **details: Any
    ) -> Event:
        self._seq += 1
        event = Event(self._seq, self.epoch, kind, tenant, sandbox_id, details)
        self._events.append(event)
        self._changed.set()
        self._changed = trio.Event()
        for listener in self._listeners:
            listener(event)
        return event

    def _start_after(self, last_id: str | None) -> int:
        """The sequence number after which a follower resumes."""
        if last_id is None:
            return self._seq  # from now on
        epoch, _, number = last_id.partition("-")
        if epoch != self.epoch or not number.isdigit():
            return 0  # another run's id (or none we gave): everything still kept
        return min(int(number), self._seq)

    def follow(
        self, tenant: str, last_id: str | None = None, idle: float = math.inf
    ) -> AsyncGenerator[Event | Gap | None]:
        """The tenant's events after `last_id` (or from this call on), then each as it comes;
        None after each `idle` seconds without one (a stream's keep-alive). Close it
        (`aclosing`) when done."""
        return self._follow(tenant, self._start_after(last_id), idle)

    async def _follow(
        self, tenant: str, after: int, idle: float
    ) -> AsyncGenerator[Event | Gap | None]:
        while True:
            changed = self._changed
            # Sequence numbers in the log are consecutive: the first unseen is found by index,
            # computed afresh each time (the log may have moved while the follower was away).
            oldest = self._events[0].seq if self._events else self._seq + 1
            if after + 1 < oldest:
                after = oldest - 1
                yield Gap()
            elif after >= self._seq:
                with trio.move_on_after(idle) as quiet:
                    await changed.wait()
                if quiet.cancelled_caught:
                    yield None
            else:
                event = self._events[after + 1 - oldest]
                after = event.seq
                if event.tenant == tenant:
                    yield event
