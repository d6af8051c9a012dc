"""Every request gets an id, echoed as `X-Request-Id` and carried by every log line written
while it is handled (operations/logs.py). A caller's own `X-Request-Id`, if it looks like an
id, is kept, so one id follows a call through a proxy and into our logs."""

from __future__ import annotations

import re
import secrets
from typing import Any, cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

from ..operations.logs import request_id, sandbox_id

ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SANDBOX_IN_PATH = re.compile(r"^/(?:e2b/)?sandbox(?:es)?/([A-Za-z0-9-]{8,64})(?:/|$)")
HEADER = b"x-request-id"


class RequestIds:
    """ASGI middleware, outermost: the id is set before anything else runs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k.lower() == HEADER), b"")
        text = given.decode("latin-1")
        rid = text if ACCEPTED.match(text) else secrets.token_hex(8)
        request_id.set(rid)
        found = SANDBOX_IN_PATH.match(scope["path"])
        if found is not None:
            sandbox_id.set(found.group(1))

        async def send_with_id(event: ASGISendEvent) -> None:
            if event["type"] in ("http.response.start", "websocket.accept"):
                start = cast(dict[str, Any], dict(event))
                headers = [h for h in start.get("headers") or [] if h[0].lower() != HEADER]
                start["headers"] = [*headers, (HEADER, rid.encode())]
                event = cast(ASGISendEvent, start)
            await send(event)

        await self.app(scope, receive, send_with_id)
