"""Containment for a hypercorn 0.18 flaw: a protocol error in one connection ends the server.

A WebSocket handshake the app refuses, followed by more bytes on the same connection (a
keep-alive client's next request, or a body sent with the handshake), makes hypercorn's
WebSocket stream answer 400 while the refusal is already being sent; h11 raises
`LocalProtocolError`, nothing in hypercorn catches it, and trio's `serve_listeners` ends every
connection and the server with it. Anyone who can reach the port could do it. This wraps each
connection's handler so such an error closes that connection only.
"""

from __future__ import annotations

import logging
from typing import Any

from hypercorn.trio import tcp_server

log = logging.getLogger("insien.server")

_original_run = tcp_server.TCPServer.run


async def _contained_run(self: Any) -> None:
    try:
        await _original_run(self)
    except Exception as exc:
        log.warning("closed a connection whose HTTP state broke: %r", exc)


def contain_connection_errors() -> None:
    """Install the wrapper (idempotent)."""
    if tcp_server.TCPServer.run is not _contained_run:
        tcp_server.TCPServer.run = _contained_run  # type: ignore[method-assign]
