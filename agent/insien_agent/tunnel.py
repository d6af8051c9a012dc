"""`tunnel` and `tunnelSend`: a TCP connection from inside the sandbox to a port that a program
there listens on, its bytes carried on the request's binary channel (ports reached from
outside; the sandbox itself needs no network interface for it).

The socket's bytes go to the server as stdout frames, credited like command output, so a
client that stops reading stops the socket being read. Bytes for the socket come as
`tunnelSend` requests, each with one data frame, answered once written: the server keeps up to
four unanswered; each is written before its handler first awaits, and handlers start in the
order requests came, so order is kept and the agent holds at most four frames per tunnel. A
tunnel nobody uses (no byte either way) for `idleTimeout` seconds is closed, so one left
behind by a server that went away does not hold its socket for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from .context import Request
from .errors import BAD_REQUEST, CONNECTION_REFUSED, NOT_FOUND, AgentError
from .fields import optional_int, required_int
from .frames import STDOUT
from .output import OutFrame

Message = dict[str, Any]
READ_SIZE = 512 * 1024
DEFAULT_IDLE = 300
HOSTS = ("127.0.0.1", "::1")
"""Where a port is looked for: programs listening on loopback or on every address."""


@dataclass
class Tunnel:
    """One open tunnel: its socket's writer, the server's credit, and when it was last used."""

    writer: asyncio.StreamWriter
    credit: int
    more: asyncio.Event = field(default_factory=asyncio.Event)
    used: float = field(default_factory=time.monotonic)

    def grant(self, n: int) -> None:
        self.credit += n
        self.more.set()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    failure: OSError | None = None
    for host in HOSTS:
        try:
            return await asyncio.open_connection(host, port)
        except OSError as exc:
            failure = exc
    reason = failure.strerror if failure is not None else "no address"
    raise AgentError(CONNECTION_REFUSED, f"nothing listens on port {port} ({reason})")


async def handle_tunnel(req: Request) -> Message:
    port = required_int(req.msg, "port", minimum=1)
    if port > 65535:
        raise AgentError(BAD_REQUEST, "field 'port' must be at most 65535")
    if req.channel is None:
        raise AgentError(BAD_REQUEST, "a tunnel needs a channel")
    reader, writer = await _connect(port)
    if req.payload:  # `withData`: the first bytes came with the request (one round trip less)
        writer.write(req.payload)
    return await carry(req, reader, writer, {"port": port})


async def carry(
    req: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    about: Message,
    first: bytes = b"",
) -> Message:
    """Carry a connection on the request's channel until either side ends it: `tunnelOpened`,
    then its bytes (`first` before what the socket gives), then `tunnelClosed` with a reason.
    Also how the egress proxy hands a connection to the server (egress.py)."""
    idle = optional_int(req.msg, "idleTimeout", DEFAULT_IDLE, minimum=1)
    assert idle is not None
    tunnel = Tunnel(writer, credit=req.settings.window)
    req.subscriptions.tunnels[req.id] = tunnel
    try:
        await req.outbox.send({"id": req.id, "type": "tunnelOpened", **about})
        if first:
            tunnel.credit -= 1
            await req.emit(OutFrame(STDOUT, first))
        while True:
            try:
                while tunnel.credit <= 0:
                    tunnel.more.clear()
                    await asyncio.wait_for(tunnel.more.wait(), timeout=idle)
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout=idle)
            except asyncio.TimeoutError:  # noqa: UP041 (older Pythons in sandbox images)
                if time.monotonic() - tunnel.used < idle:
                    continue  # the other direction was busy
                return {"type": "tunnelClosed", **about, "reason": "idle"}
            except OSError:
                return {"type": "tunnelClosed", **about, "reason": "reset"}
            if not data:
                return {"type": "tunnelClosed", **about, "reason": "closed"}
            tunnel.used = time.monotonic()
            tunnel.credit -= 1
            await req.emit(OutFrame(STDOUT, data))
    finally:
        req.subscriptions.tunnels.pop(req.id, None)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def handle_tunnel_send(req: Request) -> Message:
    target = req.msg.get("tunnel")
    tunnel = req.subscriptions.tunnels.get(target)
    if tunnel is None:
        raise AgentError(NOT_FOUND, f"no open tunnel {target!r}")
    data = req.payload or b""
    try:
        if data:
            tunnel.writer.write(data)
            await tunnel.writer.drain()
        if req.msg.get("eof") is True and tunnel.writer.can_write_eof():
            tunnel.writer.write_eof()
    except OSError as exc:
        raise AgentError(CONNECTION_REFUSED, f"the connection closed ({exc.strerror})") from None
    tunnel.used = time.monotonic()
    return {"type": "tunnelSendResponse", "bytes": len(data)}
