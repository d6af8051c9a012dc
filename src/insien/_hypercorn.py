"""Containment and repair of hypercorn 0.18 flaws in how it runs an HTTP/1.1 connection.

A protocol error in one connection ended the server: a WebSocket handshake the app refuses,
followed by more bytes on the same connection (a keep-alive client's next request, or a body
sent with the handshake), makes hypercorn's WebSocket stream answer 400 while the refusal is
already being sent; h11 raises `LocalProtocolError`, nothing in hypercorn catches it, and
trio's `serve_listeners` ends every connection and the server with it. Each connection's
handler is wrapped so such an error closes that connection only.

A finished request could leave its connection hanging. hypercorn winds a request up (hands
the app `http.disconnect`, then readies the connection for the next request or closes it)
inside the app's own last `send`. Quart-trio's request task ends its nursery as soon as it
receives that disconnect, which cancels the `send` half way: the connection was then never
readied nor closed, nor given its idle timeout again. After an answer sent before the request
body was read (a 401 on a POST), the client's next request on it went unanswered; after any
request, an idle kept-alive connection stayed open for good. The wind-up is now shielded from
the app's cancellation. And an answer that starts while its request body is still arriving
says `Connection: close`: hypercorn closes such a connection after the answer (it cannot be
reused before the body ends), so the client must not send its next request on it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import h11
import trio
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol.events import Event, Response, StreamClosed
from hypercorn.trio import tcp_server

log = logging.getLogger("insien.server")

_original_run = tcp_server.TCPServer.run
_original_stream_send = h11_protocol.H11Protocol.stream_send


async def _contained_run(self: Any) -> None:
    try:
        await _original_run(self)
    except Exception as exc:
        log.warning("closed a connection whose HTTP state broke: %r", exc)


async def _shielded_stream_send(self: h11_protocol.H11Protocol, event: Event) -> None:
    connection = self.connection
    body_arriving = (
        isinstance(connection, h11.Connection) and connection.their_state is h11.SEND_BODY
    )
    if isinstance(event, Response) and event.status_code >= 200 and body_arriving:
        event = dataclasses.replace(event, headers=[*event.headers, (b"connection", b"close")])
    if isinstance(event, StreamClosed):
        # Hands the app its disconnect, which may wait for room in the app's queue: that
        # wait stays cancellable. What follows it (the wind-up) is quick and must not be cut.
        await self._close_stream()
    with trio.CancelScope(shield=True):
        await _original_stream_send(self, event)


def contain_connection_errors() -> None:
    """Install the wrappers (idempotent)."""
    if tcp_server.TCPServer.run is not _contained_run:
        tcp_server.TCPServer.run = _contained_run  # type: ignore[method-assign]
    if h11_protocol.H11Protocol.stream_send is not _shielded_stream_send:
        h11_protocol.H11Protocol.stream_send = _shielded_stream_send  # type: ignore[method-assign]
