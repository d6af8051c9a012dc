"""WebSocket upgrades to a sandbox's port, in every HTTP form (path, host, E2B's headers):
hypercorn completes the client's handshake as ASGI; this module makes the same handshake with
the app over a tunnel (wsproto as the client) and relays messages both ways. The app sees the
client's path, subprotocols, cookies (minus Insien's) and origin; the client gets the app's
chosen subprotocol, or the app's refusal as an HTTP answer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope
from hypercorn.utils import UnexpectedMessageError
from wsproto import WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..link import AgentGone
from ..link.tunnel import Tunnel, TunnelRefused
from ..protocol import ErrorCode
from .errors import ApiError

FORWARDED_HEADERS = ("cookie", "origin", "user-agent", "authorization", "accept-language")
MAX_MESSAGE = 16 * 1024 * 1024
"""A message the app sends in fragments is assembled up to this size, then the socket closes."""


class WebSocketRequest:
    """What auth needs of a WebSocket handshake: its headers and query, like an Exchange."""

    def __init__(self, scope: WebsocketScope) -> None:
        self.scope = scope
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        self.query = dict(
            parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        )


async def refuse(send: ASGISendCallable, scope: WebsocketScope, error: ApiError) -> None:
    """Answer the handshake with an HTTP error (hypercorn's denial response), else a close."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"code": str(error.code), "message": error.message}).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": error.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


def app_request(
    request: WebSocketRequest, target: str, prefix: str, cookie_name: str, token_param: str
) -> Request:
    """The handshake the app gets: the client's target and subprotocols, its end-to-end headers."""
    headers: list[tuple[bytes, bytes]] = []
    for name in FORWARDED_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "cookie":
            kept = [c for c in value.split(";") if not c.strip().startswith(cookie_name + "=")]
            value = ";".join(kept).strip()
            if not value:
                continue
        headers.append((name.encode(), value.encode("latin-1")))
    host = request.headers.get("host", "localhost")
    headers += [
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-forwarded-proto", b"wss" if request.scope.get("scheme") == "wss" else b"ws"),
        (b"x-forwarded-prefix", prefix.encode()),
    ]
    query = {k: v for k, v in request.query.items() if k != token_param}
    full = target + (f"?{urlencode(query)}" if query else "")
    return Request(
        host=host,
        target=full,
        subprotocols=list(request.scope.get("subprotocols", [])),
        extra_headers=headers,
    )


async def handshake(tunnel: Tunnel, app: WSConnection, request: Request) -> AcceptConnection:
    """The app's answer to the upgrade; ApiError 502 (with the app's status) if it refused."""
    await tunnel.send(app.send(request))
    while True:
        data = await tunnel.receive()
        if data is None:
            raise ApiError(
                502, ErrorCode.CONNECTION_REFUSED, "the app closed the connection at the handshake"
            )
        try:
            app.receive_data(data)
            for event in app.events():
                if isinstance(event, AcceptConnection):
                    return event
                if isinstance(event, (RejectConnection, RejectData)):
                    status = getattr(event, "status_code", 502)
                    raise ApiError(
                        502,
                        ErrorCode.CONNECTION_REFUSED,
                        f"the app refused the WebSocket upgrade ({status})",
                    )
        except RemoteProtocolError as exc:
            raise ApiError(
                502, ErrorCode.CONNECTION_REFUSED, f"the app's answer is not a WebSocket: {exc}"
            ) from None


async def relay(
    tunnel: Tunnel,
    app: WSConnection,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    active: Callable[[], None],
) -> None:
    """Messages both ways until either side closes; each side's close reaches the other."""

    async def from_client(done: trio.CancelScope) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    event: Any = (
                        TextMessage(data=text)
                        if text is not None
                        else BytesMessage(data=message.get("bytes") or b"")
                    )
                    await tunnel.send(app.send(event))
                    active()
                elif message["type"] == "websocket.disconnect":
                    code = int(message.get("code") or 1000)
                    await tunnel.send(
                        app.send(CloseConnection(code=code if code != 1006 else 1001))
                    )
                    return
        except (TunnelRefused, AgentGone, LocalProtocolError):
            return
        finally:
            done.cancel()

    async def from_app(done: trio.CancelScope) -> None:
        parts: list[bytes | str] = []
        size = 0
        code, reason = 1000, ""
        try:
            # Bytes that came with the app's handshake answer (a greeting sent right after
            # the 101) wait in wsproto's buffer: they are this loop's first events, before
            # anything more is read from the tunnel.
            while True:
                for event in app.events():
                    if isinstance(event, Message):
                        parts.append(event.data)
                        size += len(event.data)
                        if size > MAX_MESSAGE:
                            code, reason = 1009, "message too big"
                            return
                        if event.message_finished:
                            if isinstance(event, TextMessage):
                                text = "".join(str(part) for part in parts)
                                await send({"type": "websocket.send", "bytes": None, "text": text})
                            else:
                                whole = b"".join(p for p in parts if isinstance(p, bytes))
                                await send({"type": "websocket.send", "bytes": whole, "text": None})
                            parts, size = [], 0
                            active()
                    elif isinstance(event, Ping):
                        await tunnel.send(app.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        code, reason = event.code, event.reason or ""
                        await tunnel.send(app.send(event.response()))
                        return
                if (data := await tunnel.receive()) is None:
                    break
                app.receive_data(data)
            code, reason = 1001, "the app closed the connection"
        except RemoteProtocolError as exc:
            code, reason = 1002, f"the app broke the protocol: {exc}"
        except (TunnelRefused, AgentGone):
            code, reason = 1011, "the connection to the app ended"
        finally:
            # The client may have closed first: then there is nobody left to tell.
            quiet = contextlib.suppress(UnexpectedMessageError, LocalProtocolError)
            with trio.CancelScope(shield=True), quiet:
                await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
            done.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(from_client, nursery.cancel_scope)
        nursery.start_soon(from_app, nursery.cancel_scope)
