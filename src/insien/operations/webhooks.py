"""Webhooks: each lifecycle event POSTed as JSON to the URLs a tenant configured for it, signed,
retried, in order, without ever holding up the server.

**Signature.** `Insien-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
(docs/operations.md has a verification snippet). The timestamp is signed with the body, so a
receiver can refuse replays older than it likes.

**Delivery.** At least once: an answer other than 2xx, a refused connection or no answer within
the timeout is retried with exponential backoff and full jitter until the retry window ends,
then given up (logged and counted). Each endpoint keeps a lane per sandbox and sends a lane's
events one after another, so a sandbox's events arrive in the order they happened (event ids
give the order across sandboxes); a few lanes are sent at once (`LANES_AT_ONCE`), so an event
being retried holds back only its own sandbox's, and a slow receiver delays only itself. The
queue is bounded per endpoint: events past the bound are dropped, counted and logged, rather
than held in memory without end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import trio

from .events import Event
from .logs import long_lived_task

log = logging.getLogger("insien.webhooks")

LANES_AT_ONCE = 4
"""Sandboxes whose events one endpoint is sent at the same time."""

SIGNATURE_HEADER = "Insien-Signature"


@dataclass(frozen=True)
class Webhook:
    url: str = field(repr=False)
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset()
    """The event types it receives; empty for every type."""

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events

    @property
    def shown(self) -> str:
        """The URL as logs show it: its origin only (many webhook URLs carry a token in the
        path or query)."""
        url = httpx.URL(self.url)
        return f"{url.scheme}://{url.netloc.decode()}/…"


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout: float = 10.0
    """Seconds an attempt may take, connection included."""
    retry_for: float = 600.0
    """Seconds after the first attempt within which an event is retried."""
    first_delay: float = 0.5
    max_delay: float = 30.0
    queue: int = 1000
    """Events waiting per endpoint; more are dropped."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Insien-Signature` header's value for this body at this time."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass
class Counters:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    """Given up after the retry window."""
    dropped: int = 0
    """Never attempted: the endpoint's queue was full."""


@dataclass
class _Endpoint:
    hook: Webhook
    lanes: dict[str, deque[Event]] = field(default_factory=dict)
    """Events waiting, per sandbox, oldest first (the head of a busy lane is being sent)."""
    ready: deque[str] = field(default_factory=deque)
    """Lanes with events and nobody sending them, in the order they became so."""
    count: int = 0
    wake: trio.Event = field(default_factory=trio.Event)

    def add(self, event: Event) -> None:
        key = event.sandbox_id or ""  # events of no sandbox (a refused create) share a lane
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = deque()
            self.ready.append(key)
        lane.append(event)
        self.count += 1
        self.wake.set()

    def done(self, sandbox_id: str) -> None:
        """The head of this busy lane was delivered or given up: the lane is ready again."""
        lane = self.lanes[sandbox_id]
        lane.popleft()
        self.count -= 1
        if lane:
            self.ready.append(sandbox_id)
            self.wake.set()
        else:
            del self.lanes[sandbox_id]


class Webhooks:
    """Delivers events to the webhooks `lookup` names for their tenant. `offer` is called as
    events are published (synchronously, never blocking); `run` does the sending."""

    def __init__(
        self,
        lookup: Callable[[str], Sequence[Webhook]],
        policy: DeliveryPolicy | None = None,
    ) -> None:
        self._lookup = lookup
        self.policy = policy or DeliveryPolicy()
        self.counters = Counters()
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self._scope = trio.CancelScope()
        self._idle = trio.Event()

    def offer(self, event: Event) -> None:
        for hook in self._lookup(event.tenant):
            if not hook.wants(event.type):
                continue
            key = (event.tenant, hook.url)
            endpoint = self._endpoints.get(key)
            if endpoint is None:
                endpoint = self._endpoints[key] = _Endpoint(hook)
                if self._nursery is not None:
                    self._start(endpoint, self._nursery)
            endpoint.hook = hook  # the tenants file may have changed its secret or types
            if endpoint.count >= self.policy.queue:
                self.counters.dropped += 1
                log.warning(
                    "webhook %s of tenant %s: queue full, event %s dropped",
                    hook.shown,
                    event.tenant,
                    event.id,
                )
                continue
            endpoint.add(event)

    def pending(self) -> int:
        """Events waiting to be delivered (the ones being sent included)."""
        return sum(endpoint.count for endpoint in self._endpoints.values())

    def _start(self, endpoint: _Endpoint, nursery: trio.Nursery) -> None:
        for _ in range(LANES_AT_ONCE):
            nursery.start_soon(self._send_lanes, endpoint)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until `close()`. Events are kept in memory only: what is still waiting when
        the server stops is lost (`drain` first gives it a moment)."""
        # trust_env=False: an operator's HTTP_PROXY is for the server's other traffic, and a
        # webhook URL is the operator's own, configured on purpose.
        with self._scope:
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
                self._client = client
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for endpoint in self._endpoints.values():  # offered before it ran
                        self._start(endpoint, nursery)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._nursery = None

    async def drain(self, seconds: float) -> None:
        """Until nothing waits to be delivered, or `seconds` have passed (shutdown)."""
        with trio.move_on_after(seconds):
            while self.pending():
                self._idle = trio.Event()
                await self._idle.wait()

    def close(self) -> None:
        self._scope.cancel()

    async def _send_lanes(self, endpoint: _Endpoint) -> None:
        """One of an endpoint's senders: takes a ready lane, sends its oldest event, and
        puts the lane back; no two senders ever hold the same lane."""
        while True:
            while not endpoint.ready:
                if endpoint.wake.is_set():
                    endpoint.wake = trio.Event()
                await endpoint.wake.wait()
            sandbox_id = endpoint.ready.popleft()
            try:
                await self._deliver(endpoint.hook, endpoint.lanes[sandbox_id][0])
            finally:
                endpoint.done(sandbox_id)
            if not endpoint.count:
                self._idle.set()

    async def _deliver(self, hook: Webhook, event: Event) -> None:
        assert self._client is not None
        long_lived_task(event.sandbox_id, event.tenant)
        body = json.dumps(event.to_json()).encode()
        give_up_at = trio.current_time() + self.policy.retry_for
        attempt = 0
        while True:
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "insien-webhooks",
                "Insien-Event-Id": event.id,
                "Insien-Event-Type": event.type,
                SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
            }
            problem = "no answer in time"
            with trio.move_on_after(self.policy.timeout):
                try:
                    answer = await self._client.post(hook.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__  # its text may hold the URL
                else:
                    if 200 <= answer.status_code < 300:
                        self.counters.delivered += 1
                        return
                    problem = f"answered {answer.status_code}"
            attempt += 1
            delay = random.uniform(
                0, min(self.policy.max_delay, self.policy.first_delay * 2**attempt)
            )
            if trio.current_time() + delay > give_up_at:
                self.counters.failed += 1
                log.error(
                    "webhook %s: event %s (%s) given up after %d attempts: %s",
                    hook.shown,
                    event.id,
                    event.type,
                    attempt,
                    problem,
                )
                return
            self.counters.retried += 1
            log.warning(
                "webhook %s: event %s attempt %d failed (%s); again in %.1f s",
                hook.shown,
                event.id,
                attempt,
                problem,
                delay,
            )
            await trio.sleep(delay)
