"""What operators and dashboards read: `GET /metrics` (Prometheus text) and `GET /events`
(a tenant's lifecycle events as Server-Sent Events, resumable with `Last-Event-ID`)."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Blueprint, Response, request

from ..operations.events import Gap
from ..operations.metrics import CONTENT_TYPE
from ..protocol import ErrorCode
from ..tenancy.quotas import QuotaExceeded
from .context import Services
from .errors import ApiError
from .openapi import operation

KEEPALIVE_SECONDS = 15.0
"""A comment line this often on a quiet event stream, so proxies do not close it as idle."""
METRICS_LISTENER = "insien.metrics_listener"
"""Set in the scope of requests that came in on INSIEN_METRICS_LISTEN (see `MetricsListener`)."""


def operations_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("operations", __name__)
    manager = services.manager
    token = services.settings.metrics_token

    def metrics_allowed() -> bool:
        if request.scope.get(METRICS_LISTENER):
            return True
        if token is None:
            return False
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        return hmac.compare_digest(given.encode(), expected.encode())

    @bp.get("/metrics")
    @operation(
        summary="Prometheus metrics (its own token, or the metrics listener)",
        description="`Authorization: Bearer <INSIEN_METRICS_TOKEN>`, or no header on the "
        "address INSIEN_METRICS_LISTEN binds. Off when neither is set.",
        answer="metrics",
        errors=(401, 404),
        tag="operations",
        auth=False,
    )
    async def metrics() -> Any:
        if token is None and not request.scope.get(METRICS_LISTENER):
            raise ApiError(
                404,
                ErrorCode.NOT_FOUND,
                "metrics are off: set INSIEN_METRICS_TOKEN or INSIEN_METRICS_LISTEN",
            )
        if not metrics_allowed():
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or wrong metrics token")
        return Response(manager.metrics.render(), content_type=CONTENT_TYPE)

    @bp.get("/events")
    @operation(
        summary="Your sandboxes' lifecycle events as Server-Sent Events",
        description="Resumes after `Last-Event-ID` (header, or `lastEventId` in the query) "
        "from the events the server keeps for your tenant; `event: gap` says how many were "
        "dropped since. A stream counts against your plan's `max_connections`, as a "
        "WebSocket does.",
        answer="events",
        errors=(429,),
        tag="operations",
    )
    async def events() -> Any:
        tenant = services.tenant_from_key(request)
        last = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        try:
            # Held for as long as the stream is: a tenant holds as many as its plan allows.
            held = services.gate.hold_connection(tenant)
        except QuotaExceeded as exc:
            raise ApiError.from_quota(exc) from None

        async def stream() -> AsyncGenerator[bytes]:
            try:
                # Where the stream starts is fixed now, before the response's head goes out.
                following = manager.events.follow(tenant.id, last or None, idle=KEEPALIVE_SECONDS)
                yield b""  # taken below, before the route returns: see there
                yield b": insien events\n\n"  # the headers go out now, not with the first event
                async with aclosing(following) as follow:
                    async for item in follow:
                        if item is None:
                            yield b": keep-alive\n\n"
                        elif isinstance(item, Gap):
                            gap = {"message": "events were dropped", "missed": item.missed}
                            yield f"event: gap\ndata: {json.dumps(gap)}\n\n".encode()
                        else:
                            data = json.dumps(item.to_json())
                            yield f"id: {item.id}\nevent: {item.type}\ndata: {data}\n\n".encode()
            finally:
                held.release()

        body = stream()
        # Started here, so its `finally` gives the slot back however the response ends: closed
        # by Quart after sending, or (a client gone before the body began) closed by trio's
        # finalizer for started async generators when the response is dropped.
        await body.__anext__()
        response = Response(body, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: do not hold the stream back
        response.timeout = None  # a stream for as long as it is read
        return response

    return bp


class MetricsListener:
    """Requests that came in on INSIEN_METRICS_LISTEN: `/metrics` without a token and
    `/health`, nothing else (that address is for a scraper on a private network)."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        if server is None or server[1] != self.port:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] in ("/metrics", "/health"):
            await self.app({**scope, METRICS_LISTENER: True}, receive, send)
            return
        if scope["type"] == "http":
            body = b'{"error": "only /metrics and /health are served here", "code": "NOT_FOUND"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                    "trailers": False,
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "not served here"})
