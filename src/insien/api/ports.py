"""Ports of a sandbox reached from outside, through its agent (no network in the sandbox).

`GET /sandbox/<id>/ports/<port>/tcp` (a WebSocket) carries one TCP connection to `port`
inside the sandbox as binary messages, both ways: what `insien sandbox forward` and the SDKs'
`ports.forward` build a local listener on. A port nobody listens on refuses the handshake
with 502 `CONNECTION_REFUSED` at once; past INSIEN_MAX_TUNNELS open connections into one
sandbox, 429 `BUSY`. An open tunnel counts as activity for the idle clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import trio
from quart import Blueprint, request, websocket

from ..link import AgentGone
from ..link.tunnel import TunnelRefused
from ..protocol import ErrorCode
from ..sandboxes.access import Credentials, Surface, TooManyTunnels, Unauthenticated
from ..sandboxes.sandbox import iso_timestamp
from .bodies import json_body
from .context import Services
from .errors import ApiError, answer_for, error_response, status_for
from .openapi import operation
from .schemas import PreviewUrl, PreviewUrlRequest

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
IDLE_TIMEOUT = 300.0
"""A tunnel with no byte either way for this long is closed (by the agent, too)."""


def ports_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ports", __name__)

    @bp.websocket("/sandbox/<sandbox_id>/ports/<int:port>/tcp")
    @operation(
        summary="A TCP connection to a port inside the sandbox, as a WebSocket",
        description=(
            "Binary messages both ways carry the connection's bytes; either side closing "
            "closes it. A port nobody listens on refuses the handshake with 502."
        ),
        answer="websocket",
        errors=(400, 404, 429, 502, 503),
        tag="ports",
    )
    async def tcp_tunnel(sandbox_id: str, port: int) -> Any:
        try:
            if not 1 <= port <= 65535:
                raise ApiError(400, ErrorCode.BAD_REQUEST, "a port is 1 to 65535")
            credentials = Credentials(
                key=websocket.headers.get("X-API-Key"),
                traffic_token=websocket.headers.get("E2B-Traffic-Access-Token"),
            )
            admission = services.gate.admit(sandbox_id, credentials, Surface.PORT, port=port)
        except Unauthenticated as exc:
            return answer_for(ApiError(401, ErrorCode.UNAUTHORIZED, str(exc)))
        except Exception as exc:
            return answer_for(exc)
        try:
            async with services.gate.tunnel(admission, port, idle_timeout=IDLE_TIMEOUT) as tunnel:
                await websocket.accept()
                reason = "closed"

                async def to_sandbox(done: trio.CancelScope) -> None:
                    nonlocal reason
                    while True:
                        data = await websocket.receive()
                        try:
                            await tunnel.send(data.encode() if isinstance(data, str) else data)
                        except TunnelRefused as exc:  # the program closed its end
                            reason = exc.message
                            done.cancel()
                            return
                        admission.active()

                async def from_sandbox(done: trio.CancelScope) -> None:
                    nonlocal reason
                    while (chunk := await tunnel.receive()) is not None:
                        await websocket.send(chunk)
                        admission.active()
                    reason = tunnel.closed_reason or "closed"
                    done.cancel()  # the program closed the connection

                async with trio.open_nursery() as both:
                    both.start_soon(to_sandbox, both.cancel_scope)
                    both.start_soon(from_sandbox, both.cancel_scope)
                await websocket.close(CLOSE_NORMAL, reason[:120])
        except TunnelRefused as exc:
            status = status_for(exc.code)
            return error_response(status if status != 500 else 502, exc.code, exc.message)
        except TooManyTunnels as exc:
            return answer_for(exc)
        except AgentGone as exc:
            await websocket.close(CLOSE_GOING_AWAY, str(exc)[:120])
        return None

    @bp.post("/sandboxes/<sandbox_id>/ports/<int:port>/url")
    @operation(
        summary="A preview URL for a port: HTTP without a key, until it expires",
        body=PreviewUrlRequest,
        answer=PreviewUrl,
        errors=(400, 404),
        tag="ports",
    )
    async def preview_url(sandbox_id: str, port: int) -> Any:
        tenant = services.tenant_from_key(request)
        if not 1 <= port <= 65535:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "a port is 1 to 65535")
        body = await json_body(PreviewUrlRequest)
        sandbox = services.manager.get(sandbox_id, tenant)
        token = services.auth.issue_port_token(sandbox.id, port, tenant, body.expires)
        base = services.public_base(request)
        domain = services.settings.domain
        if domain is not None:  # an origin of the port's own: what browsers should be given
            scheme, _, authority = base.partition("://")
            host = f"{port}-{sandbox.id}.{domain}"
            served_on = authority.split("/")[0].rpartition(":")
            if ":" not in domain and served_on[1] and served_on[2].isdigit():
                host += f":{served_on[2]}"  # the domain names no port: the server's own
            page = f"{scheme}://{host}/"
        else:  # on the API's origin, sandboxed (preview.py)
            page = f"{base}/sandbox/{sandbox.id}/ports/{port}/"
        expires = datetime.now(UTC) + timedelta(seconds=body.expires)
        made = PreviewUrl(
            url=f"{page}?insien_token={token}",
            token=token,
            expiresAt=iso_timestamp(expires),
        )
        return made.model_dump(mode="json")

    return bp
