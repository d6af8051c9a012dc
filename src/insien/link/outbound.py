"""The server's own connections out for a sandbox's egress proxy: resolve a name, connect to
the first of the addresses the core admitted, and carry bytes between that socket and the
agent's tunnel (link/egress.py opens it). I/O only: which addresses may be tried, and whether
a connection is carried untouched, is decided by the core with egress/connection.py.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

import trio

from ..egress.rules import IPAddress
from .agent import AgentGone
from .tunnel import Tunnel, TunnelRefused

RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
READ_SIZE = 256 * 1024


async def resolve(name: str, port: int) -> list[IPAddress]:
    """The addresses DNS gives `name` for a TCP connection to `port`, each once, in the
    resolver's order; none when it does not resolve (or not within RESOLVE_TIMEOUT)."""
    try:
        with trio.fail_after(RESOLVE_TIMEOUT):
            infos = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, trio.TooSlowError, UnicodeError):
        return []
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


async def connect_first(
    addresses: Sequence[IPAddress], port: int
) -> tuple[trio.SocketStream, IPAddress] | str:
    """A connection to the first of `addresses` that accepts one on `port` (each given
    CONNECT_TIMEOUT), and its address; else why the last one failed."""
    failure = ""
    for address in addresses:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                # An address, never a name: what was checked is what is connected to.
                stream = await trio.open_tcp_stream(str(address), port)
            return stream, address
        except (OSError, trio.TooSlowError) as exc:
            failure = f"could not connect to {address}:{port}: {exc or 'timed out'}"
    return failure


async def relay(
    tunnel: Tunnel, stream: trio.SocketStream, moved: Callable[[int, int], None]
) -> None:
    """Bytes both ways until the program inside closes (the agent then ends the tunnel);
    `moved(out, back)` hears of each chunk carried (out: towards the far end)."""

    gone = (
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        OSError,
        TunnelRefused,
        AgentGone,
    )

    async def out(cancel: trio.CancelScope) -> None:
        try:
            while (data := await tunnel.receive()) is not None:
                await stream.send_all(data)
                moved(len(data), 0)
            await stream.send_eof()
        except gone:
            pass
        finally:
            cancel.cancel()  # the program's side is closed: nothing more can be carried

    async def back(cancel: trio.CancelScope) -> None:
        try:
            while data := await stream.receive_some(READ_SIZE):
                await tunnel.send(data)
                moved(0, len(data))
            await tunnel.send(b"", eof=True)
        except gone:
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(out, nursery.cancel_scope)
        nursery.start_soon(back, nursery.cancel_scope)
