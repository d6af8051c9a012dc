"""One HTTP request and its answer at the ASGI level, for what is served beside Quart.

Uploads (`PUT /sandbox/<id>/files`, E2B's `/files`) and envd's streams are raw ASGI, not Quart
routes: an upload must not be buffered whole (each `receive()` is one bounded piece, and
hypercorn stops reading the socket until it is taken), and a stream needs its own writer task
and a watch on the client's disconnect inside one nursery. This is the little that takes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qsl

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

DISCARD_LIMIT = 16 * 1024 * 1024
DISCARD_SECONDS = 5.0


class BodyTooLarge(Exception):
    """The request body passed the limit it was read with."""


class ClientGone(Exception):
    """The client went away before its request body was complete."""


class Exchange:
    """A request's method, path, headers and query, its body, and the calls that answer it."""

    def __init__(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable):
        self.scope = scope
        self._receive = receive
        self._send = send
        self.method = scope["method"]
        self.path = scope["path"]
        self.headers: dict[str, str] = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        self.query: dict[str, str] = dict(
            parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        )
        self.body_done = False
        self.disconnected = False
        self.started = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives (each chunk once)."""
        while not self.body_done:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                self.disconnected = self.body_done = True
                raise ClientGone("the client went away before its request body was complete")
            if event["type"] == "http.request":
                self.body_done = not event.get("more_body", False)
                data = event.get("body", b"")
                if data:
                    yield bytes(data)

    async def read_body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def discard_body(self) -> bool:
        """Read and drop a bounded rest of a refused request's body, so the client gets to see
        the answer; False if there was more (the connection should then close)."""
        left = DISCARD_LIMIT
        with suppress(ClientGone), trio.move_on_after(DISCARD_SECONDS):
            async for chunk in self.chunks():
                left -= len(chunk)
                if left < 0:
                    return False
        return self.body_done and not self.disconnected

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (after the body has been read)."""
        while not self.disconnected:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                self.disconnected = True

    async def start(
        self, status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.started = True
        raw = [(b"content-type", content_type.encode())]
        raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def start_raw(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Start an answer with exactly these headers (a proxied app's own)."""
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes, *, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        await self.start(status, content_type, [*headers, ("content-length", str(len(body)))])
        await self.write(body, more=False)

    async def respond_json(
        self, status: int, value: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        await self.respond(status, body, "application/json", headers)
