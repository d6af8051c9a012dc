"""A TCP connection to a port inside a sandbox, through its agent (`tunnel` in the agent;
docs/protocol.md, "Tunnels"). The sandbox needs no network interface: the agent connects on
its loopback and the bytes ride the agent link as binary frames.

From the sandbox, bytes come as frames on the tunnel request's channel, credited like command
output (the consumer's pace is the socket's). Towards it, `send` writes one frame at a time
and waits for the agent's answer, so order is kept and at most one frame is in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..protocol import Message
from .agent import AgentLink
from .frames import MAX_FRAME
from .pending import PendingRequest

DEFAULT_IDLE = 300


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
        """Write bytes to the program (in frames of at most 1 MiB, one at a time); `eof`
        half-closes the connection after them."""
        message: Message = {"type": "tunnelSend", "tunnel": self._pending.agent_id}
        for start in range(0, len(data), MAX_FRAME):
            await self._send_one(message, data[start : start + MAX_FRAME])
        if eof:
            await self._send_one({**message, "eof": True}, None)

    async def _send_one(self, message: Message, payload: bytes | None) -> None:
        async with self._link.request(message, payload=payload) as pending:
            async for reply in pending:
                if reply.message.get("type") == "error":
                    raise TunnelRefused(
                        str(reply.message.get("code")), str(reply.message.get("message"))
                    )


@asynccontextmanager
async def open_tunnel(
    link: AgentLink, port: int, *, idle_timeout: float = DEFAULT_IDLE
) -> AsyncIterator[Tunnel]:
    """Connect to `port` inside the sandbox; leaving the block closes the connection."""
    message: Message = {"type": "tunnel", "port": port}
    async with carried(link, message, idle_timeout) as tunnel:
        yield tunnel


@asynccontextmanager
async def carried(link: AgentLink, message: Message, idle_timeout: float) -> AsyncIterator[Tunnel]:
    """A request the agent answers by carrying a connection (`tunnel`, `egressOpen`)."""
    message = {**message, "idleTimeout": max(1, int(idle_timeout))}
    async with link.request(message, binary=True) as pending:
        first = link.missing_reply(None)
        async for reply in pending:
            first = reply.message
            break
        if first.get("type") != "tunnelOpened":
            raise TunnelRefused(str(first.get("code")), str(first.get("message")))
        yield Tunnel(link, pending)
