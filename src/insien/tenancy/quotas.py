"""Per-tenant limits enforced at the moment of use: create rate and open connections.

Counting live sandboxes belongs to the manager (it knows which are being created); these are the
small counters that need no Docker state. Everything here runs on the trio thread, so a check
and its update never interleave: under a burst, exactly the allowed number gets through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from ..protocol import ErrorCode
from .tenants import Tenant


class QuotaExceeded(Exception):
    """A tenant is over a limit; `retry_after` is a whole number of seconds worth waiting."""

    def __init__(
        self, code: ErrorCode, message: str, retry_after: float, reason: str = "quota"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = max(1, math.ceil(retry_after))
        self.reason = reason
        """Which limit (`sandboxes`, `create_rate`, `connections`, `snapshots`,
        `snapshot_bytes`): a metrics label and an event's detail."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CreateRateLimiter:
    """A token bucket per tenant: `create_rate` per minute, up to `create_burst` at once."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: Tenant) -> None:
        rate, burst = tenant.plan.create_rate, tenant.plan.create_burst
        if rate is None:
            return
        per_second = rate / 60.0
        now = trio.current_time()
        bucket = self._buckets.setdefault(tenant.id, _Bucket(float(burst), now))
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise QuotaExceeded(
                ErrorCode.RATE_LIMITED,
                f"more than {rate:g} creates per minute",
                (1.0 - bucket.tokens) / per_second,
                "create_rate",
            )
        bucket.tokens -= 1.0


class ConnectionCounter:
    """Long-lived client connections per tenant (WebSockets and `GET /events` streams together),
    against the plan's `max_connections`."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, tenant_id: str) -> int:
        return self._open.get(tenant_id, 0)

    def acquire(self, tenant: Tenant) -> None:
        """Count one more open connection, or refuse it if the plan's cap is reached."""
        cap = tenant.plan.max_connections
        current = self._open.get(tenant.id, 0)
        if cap is not None and current >= cap:
            raise QuotaExceeded(
                ErrorCode.QUOTA_EXCEEDED,
                f"at most {cap} open connections per tenant",
                5,
                "connections",
            )
        self._open[tenant.id] = current + 1

    def release(self, tenant: Tenant) -> None:
        left = self._open.get(tenant.id, 0) - 1
        if left > 0:
            self._open[tenant.id] = left
        else:
            self._open.pop(tenant.id, None)
