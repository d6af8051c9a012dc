"""Cross-origin requests from web pages (the JavaScript SDK in a browser, a dashboard): the
origins in INSIEN_CORS_ORIGINS get CORS headers, preflights answered here; others get none,
so browsers keep refusing them. No cookies are involved (the key is a header), so credentials
are never allowed. WebSockets need none of this: browsers do not apply CORS to them, and the
agentUrl token is what authorises one.
"""

from __future__ import annotations

from typing import Any, cast

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

ALLOWED_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    b"X-API-Key, Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, X-Request-Id"
)
EXPOSED_HEADERS = b"Retry-After, X-Insien-File-Size, X-Next-Token, X-Request-Id"
MAX_AGE = b"600"


class CorsMiddleware:
    """ASGI middleware in front of everything else (uploads and the E2B front included)."""

    def __init__(self, app: Any, origins: list[str]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = {origin.rstrip("/").encode() for origin in origins}

    def _allowed(self, scope: HTTPScope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"origin":
                return value if self.any_origin or value in self.origins else None
        return None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or not (self.origins or self.any_origin):
            await self.app(scope, receive, send)
            return
        origin = self._allowed(scope)
        if origin is None:
            await self.app(scope, receive, send)
            return
        asked = dict(scope["headers"])
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in asked:
            preflight: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-allow-methods", ALLOWED_METHODS),
                    (b"access-control-allow-headers", ALLOWED_HEADERS),
                    (b"access-control-max-age", MAX_AGE),
                    (b"vary", b"Origin"),
                ],
                "trailers": False,
            }
            await send(preflight)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def with_headers(event: ASGISendEvent) -> None:
            if event["type"] == "http.response.start":
                start = cast(HTTPResponseStartEvent, dict(event))
                start["headers"] = [
                    *event.get("headers", ()),
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", EXPOSED_HEADERS),
                    (b"vary", b"Origin"),
                ]
                event = start
            await send(event)

        await self.app(scope, receive, with_headers)
