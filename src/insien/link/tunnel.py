"""A TCP connection to a port inside a sandbox, through its agent (`tunnel` in the agent;
docs/protocol.md, "Tunnels"). The sandbox needs no network interface: the agent connects on
its loopback and the bytes ride the agent link as binary frames.

From the sandbox, bytes come as frames on the tunnel request's channel, credited like command
output (the consumer's pace is the socket's). Towards it, `send` keeps up to four frames in
flight, each answered once written (the agent writes them in the order they came).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from ..protocol import Message
from .agent import AgentLink
from .frames import MAX_FRAME
from .pending import PendingRequest

DEFAULT_IDLE = 300
SEND_WINDOW = 4
"""`tunnelSend` frames in flight per tunnel: one round trip through the agent per frame
capped a download at 256 KiB per round trip; four keep the pipe full and bound what the
agent holds per tunnel to 4 MiB."""


class TunnelCounter:
    """Tunnels open per sandbox, so one sandbox's ports cannot take every connection."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def try_take(self, sandbox_id: str, limit: int) -> bool:
        if self._open.get(sandbox_id, 0) >= limit:
            return False
        self._open[sandbox_id] = self._open.get(sandbox_id, 0) + 1
        return True

    def release(self, sandbox_id: str) -> None:
        left = self._open.pop(sandbox_id, 1) - 1
        if left > 0:
            self._open[sandbox_id] = left


class TunnelRefused(Exception):
    """The agent could not open the tunnel (`code`: CONNECTION_REFUSED when nothing listens)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Tunnel:
    """One open tunnel: `receive` the sandbox's bytes, `send` bytes to it."""

    def __init__(self, link: AgentLink, pending: PendingRequest) -> None:
        self._link = link
        self._pending = pending
        self.closed_reason: str | None = None
        self._unanswered: deque[
            tuple[AbstractAsyncContextManager[PendingRequest], PendingRequest]
        ] = deque()

    async def receive(self) -> bytes | None:
        """The next bytes from the program in the sandbox; None once it closed (or the tunnel
        ended: `closed_reason` says why)."""
        async for reply in self._pending:
            if reply.data is not None:
                return reply.data
            message = reply.message
            if message.get("type") == "tunnelClosed":
                self.closed_reason = str(message.get("reason") or "closed")
                return None
            if message.get("type") == "error":
                self.closed_reason = f"{message.get('code')}: {message.get('message')}"
                return None
        self.closed_reason = self.closed_reason or "ended"
        return None

    async def send(self, data: bytes, *, eof: bool = False) -> None:
        """Write bytes to the program (in frames of at most 1 MiB); `eof` half-closes the
        connection after them. Up to SEND_WINDOW frames go before the oldest's answer is
        awaited, so a failed write raises here on a later call (or from `flush`)."""
        message: Message = {"type": "tunnelSend", "tunnel": self._pending.agent_id}
        for start in range(0, len(data), MAX_FRAME):
            await self._push(message, data[start : start + MAX_FRAME])
        if eof:
            await self._push({**message, "eof": True}, None)

    async def flush(self) -> None:
        """Wait until every frame sent so far is written to the program's socket."""
        while self._unanswered:
            await self._settle_oldest()

    async def _push(self, message: Message, payload: bytes | None) -> None:
        while len(self._unanswered) >= SEND_WINDOW:
            await self._settle_oldest()
        # The agent writes each frame before its handler first waits, in the order the
        # requests came (its tasks start in that order), so frames in flight stay in order.
        # That holds on stdio only: a frame on the bulk socket may come after its line, and
        # handlers waiting for their frames can resume in another order (a connection's bytes
        # reordered), so a tunnel's bytes to the sandbox stay on stdio.
        opening = self._link.request(message, payload=payload, bulk=False)
        self._unanswered.append((opening, await opening.__aenter__()))

    async def _settle_oldest(self) -> None:
        opening, pending = self._unanswered.popleft()
        failure: TunnelRefused | None = None
        try:
            async for reply in pending:
                if reply.message.get("type") == "error":
                    failure = TunnelRefused(
                        str(reply.message.get("code")), str(reply.message.get("message"))
                    )
        finally:
            await opening.__aexit__(None, None, None)
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        """Let go of the writes still unanswered (the tunnel is ending)."""
        with trio.CancelScope(shield=True):
            while self._unanswered:
                opening, _ = self._unanswered.popleft()
                await opening.__aexit__(None, None, None)


@asynccontextmanager
async def open_tunnel(
    link: AgentLink, port: int, *, idle_timeout: float = DEFAULT_IDLE, first: bytes = b""
) -> AsyncIterator[Tunnel]:
    """Connect to `port` inside the sandbox; leaving the block closes the connection. `first`
    is written as soon as it connects (an HTTP request's head), with the open itself where
    the agent can take it."""
    message: Message = {"type": "tunnel", "port": port}
    together = bool(first) and "tunnelWithData" in ((link.hello or {}).get("features") or [])
    if together:
        message["withData"] = True
    async with carried(link, message, idle_timeout, first if together else None) as tunnel:
        if first and not together:
            await tunnel.send(first)
        yield tunnel


@asynccontextmanager
async def carried(
    link: AgentLink, message: Message, idle_timeout: float, payload: bytes | None = None
) -> AsyncIterator[Tunnel]:
    """A request the agent answers by carrying a connection (`tunnel`, `egressOpen`)."""
    message = {**message, "idleTimeout": max(1, int(idle_timeout))}
    async with link.request(message, binary=True, payload=payload, bulk=False) as pending:
        first = link.missing_reply(None)
        async for reply in pending:
            first = reply.message
            break
        if first.get("type") != "tunnelOpened":
            raise TunnelRefused(str(first.get("code")), str(first.get("message")))
        tunnel = Tunnel(link, pending)
        try:
            yield tunnel
        finally:
            await tunnel.aclose()
