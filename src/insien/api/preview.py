"""Preview URLs, path form: `ANY /sandbox/<id>/ports/<port>/<path…>` is proxied to the program
listening on `port` inside the sandbox, over one tunnel through its agent per request (the
sandbox keeps no network). Served as raw ASGI beside Quart, so bodies stream both ways
unbuffered; the request is written and the answer read with h11.

WebSocket upgrades go through too (preview_ws.py), on every path but `/tcp` (the raw TCP
WebSocket of ports.py; the host form reaches an app's `/tcp`).

Who may is preview_auth.py's to decide (through the gateway); this module only proxies, for
callers it admitted, with Insien's credentials (the key, tokens, the preview cookie) taken out
of what the app is sent. The app is told where it is mounted (`X-Forwarded-Prefix`, `-Host`,
`-Proto`). A port nobody listens on answers 502 at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from urllib.parse import urlencode

import h11
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope
from wsproto import ConnectionType, WSConnection

from ..link import AgentGone
from ..link.tunnel import Tunnel, TunnelRefused
from ..protocol import ErrorCode
from ..sandboxes.access import Admission, TooManyTunnels
from ..sandboxes.sandbox import Sandbox
from .context import Services
from .errors import CORE_ERRORS, ApiError, api_error_for, status_for
from .exchange import ClientGone, Exchange
from .ports import IDLE_TIMEOUT
from .preview_auth import COOKIE, TOKEN_PARAM, admit, awake, without_preview_cookie, without_token
from .preview_ws import WebSocketRequest, app_request, handshake, refuse, relay

PREVIEW_PATH = re.compile(r"^/sandbox/(?P<id>[^/]+)/ports/(?P<port>[0-9]{1,5})(?P<rest>/.*)?$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-api-key",
        "x-access-token",
        "e2b-traffic-access-token",
        "host",
    }
)
"""Headers that belong to one hop (or to Insien), never passed on."""


class PreviewProxy:
    """HTTP and WebSockets for a sandbox's port, carried to the program on it (the router,
    router.py, says which requests are)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def serve(
        self,
        exchange: Exchange,
        sandbox_id: str,
        port: int,
        path: str,
        prefix: str,
        *,
        own_origin: bool = False,
    ) -> None:
        """Proxy one request to `path` on `port` of the sandbox, or answer why not. `prefix`
        is where the app is mounted as the client sees it ("" for a host of its own);
        `own_origin` says the request came for the port's own host (`<port>-<id>.<domain>`),
        so its answer is not on the API's origin and may keep origin-wide headers."""
        try:
            await self._proxy(exchange, sandbox_id, port, path, prefix, own_origin)
        except (ApiError, TunnelRefused, *CORE_ERRORS) as raised:
            if exchange.started:
                return  # the answer had begun: ending it short is all that is left to do
            error = _error_for(raised)
            await exchange.discard_body()
            headers = [("retry-after", str(error.retry_after))] if error.retry_after else []
            await exchange.respond_json(
                error.status, {"code": str(error.code), "message": error.message}, headers
            )
        except ClientGone:
            return

    async def serve_websocket(
        self,
        scope: WebsocketScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sandbox_id: str,
        port: int,
        path: str,
        prefix: str,
    ) -> None:
        """A WebSocket to `path` on `port` (preview_ws.py): the same access as HTTP."""
        request = WebSocketRequest(scope)
        if (await receive())["type"] != "websocket.connect":
            return
        services = self.services
        try:
            access = admit(services.gate, request.headers, request.query, sandbox_id, port, prefix)
            await awake(services.gate, access.admission)
        except (ApiError, *CORE_ERRORS) as raised:
            await refuse(send, scope, _error_for(raised))
            return
        accepted = False
        try:
            admission = access.admission
            async with services.gate.tunnel(admission, port, idle_timeout=IDLE_TIMEOUT) as tunnel:
                app = WSConnection(ConnectionType.CLIENT)
                wanted = app_request(request, path, prefix, COOKIE, TOKEN_PARAM)
                masked = _masked_host(admission.sandbox, port)
                if masked is not None:
                    forwarded = [
                        (k, masked.encode("latin-1") if k == b"x-forwarded-host" else v)
                        for k, v in wanted.extra_headers
                    ]
                    wanted = replace(wanted, host=masked, extra_headers=forwarded)
                answer = await handshake(tunnel, app, wanted)
                cookie = access.cookie
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": answer.subprotocol,
                        "headers": [(b"set-cookie", cookie.encode())] if cookie else [],
                    }
                )
                accepted = True
                await relay(tunnel, app, receive, send, admission.active)
        except (ApiError, TunnelRefused, AgentGone, TooManyTunnels) as raised:
            if not accepted:
                await refuse(send, scope, _error_for(raised))

    async def _proxy(
        self,
        exchange: Exchange,
        sandbox_id: str,
        port: int,
        path: str,
        prefix: str,
        own_origin: bool,
    ) -> None:
        services = self.services
        access = admit(services.gate, exchange.headers, exchange.query, sandbox_id, port, prefix)
        admission = access.admission
        await awake(services.gate, admission)
        client = h11.Connection(h11.CLIENT)
        masked = _masked_host(admission.sandbox, port)
        head = client.send(_request(exchange, path, prefix, masked)) or b""
        opening = services.gate.tunnel(admission, port, idle_timeout=IDLE_TIMEOUT, first=head)
        async with opening as tunnel:
            answer = AnswerHeaders(access.cookie, shared_origin=not own_origin)
            await _relay(exchange, admission, tunnel, client, answer)


ORIGIN_WIDE = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "service-worker-allowed",
        "clear-site-data",
        "strict-transport-security",
        "alt-svc",
        "nel",
        "report-to",
        "reporting-endpoints",
        "accept-ch",
        "critical-ch",
        "origin-agent-cluster",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-expose-headers",
        "timing-allow-origin",
    }
)
"""Answer headers that act beyond one document (cookies, service workers, stored policies,
CORS grants): an app served on the API's own origin would set them for Insien itself."""
SHARED_ORIGIN_POLICY = (
    b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
)
"""A page served on the API's origin gets an opaque origin of its own (no `allow-same-origin`):
no cookies, storage or service workers of the API's origin, no same-origin reads of it."""


class AnswerHeaders:
    """What of an app's answer headers reaches the client, and what Insien adds.

    On the port's own host (`<port>-<id>.<domain>`) the answer is the app's, less hop-by-hop
    headers and with cookies kept to that host. On the API's origin (the path form and E2B's
    header form) nothing the app sends may act for the origin: origin-wide headers are dropped
    and the page is sandboxed into an opaque origin (docs/security.md, "Preview origins")."""

    def __init__(self, cookie: str | None, *, shared_origin: bool) -> None:
        self.cookie = cookie
        self.shared_origin = shared_origin

    def of(self, app_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        for name, value in app_headers:
            lowered = name.lower()
            text = lowered.decode("latin-1")
            if text in HOP_BY_HOP - {"host"}:
                continue
            if self.shared_origin and text in ORIGIN_WIDE:
                continue
            if text == "set-cookie":
                value = _host_only(value)
            headers.append((lowered, value))
        if self.shared_origin:
            headers += [
                (b"content-security-policy", SHARED_ORIGIN_POLICY),
                (b"x-content-type-options", b"nosniff"),
                (b"cross-origin-resource-policy", b"same-origin"),
            ]
        if self.cookie is not None:
            headers.append((b"set-cookie", self.cookie.encode("latin-1")))
        return headers


def _host_only(cookie: bytes) -> bytes:
    """A cookie without its `Domain` attribute: kept to the host that set it, so one
    sandbox's port cannot set cookies for its siblings under the preview domain."""
    kept = [part for part in cookie.split(b";") if not part.strip().lower().startswith(b"domain=")]
    return b";".join(kept)


def _error_for(raised: Exception) -> ApiError:
    if isinstance(raised, TunnelRefused):
        known = raised.code in {str(code) for code in ErrorCode}
        code = ErrorCode(raised.code) if known else ErrorCode.INTERNAL
        status = status_for(code)
        return ApiError(status if status != 500 else 502, code, raised.message)
    return api_error_for(raised)


def _masked_host(sandbox: Sandbox, port: int) -> str | None:
    """The Host the app is told instead of the client's (E2B's `maskRequestHost`, `${PORT}`
    replaced by the port), or None to pass the client's on."""
    mask = sandbox.options.mask_request_host
    return None if mask is None else mask.replace("${PORT}", str(port))


def _request_headers(
    exchange: Exchange, prefix: str, masked: str | None = None
) -> list[tuple[bytes, bytes]]:
    scope = exchange.scope
    headers: list[tuple[bytes, bytes]] = []
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered.decode("latin-1") in HOP_BY_HOP:
            continue
        if lowered == b"cookie":  # the preview cookie is Insien's, not the app's
            cookies = without_preview_cookie(value)
            if cookies is None:
                continue
            value = cookies
        headers.append((name, value))
    host = masked or exchange.headers.get("host", "localhost")
    headers += [
        (b"host", host.encode("latin-1")),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-forwarded-proto", scope.get("scheme", "http").encode()),
        (b"x-forwarded-prefix", prefix.encode()),
        (b"connection", b"close"),
    ]
    if "content-length" not in exchange.headers and "transfer-encoding" in exchange.headers:
        headers.append((b"transfer-encoding", b"chunked"))
    return headers


def _request(exchange: Exchange, path: str, prefix: str, masked: str | None = None) -> h11.Request:
    """The request the app gets: the client's, minus Insien's token, headers for one hop, and
    the masked Host (with `X-Forwarded-Host`) when the sandbox has one."""
    query = without_token(exchange.query)
    target = path + (f"?{urlencode(query)}" if query else "")
    return h11.Request(
        method=exchange.method, target=target, headers=_request_headers(exchange, prefix, masked)
    )


async def _relay(
    exchange: Exchange,
    admission: Admission,
    tunnel: Tunnel,
    client: h11.Connection,
    answer: AnswerHeaders,
) -> None:
    """The request's body to the app (its head went with the tunnel) and the answer back,
    both streamed."""

    async def upload() -> None:
        async for chunk in exchange.chunks():
            await tunnel.send(client.send(h11.Data(data=chunk)) or b"")
            admission.active()
        await tunnel.send(client.send(h11.EndOfMessage()) or b"")

    try:
        async with trio.open_nursery() as both:
            both.start_soon(upload)
            try:
                await _answer(exchange, admission, tunnel, client, answer)
            except h11.RemoteProtocolError as exc:
                raise TunnelRefused(
                    ErrorCode.CONNECTION_REFUSED, f"the app's answer is not HTTP: {exc}"
                ) from None
            # The whole answer is sent: what is left of the request body is not wanted.
            both.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


async def _answer(
    exchange: Exchange,
    admission: Admission,
    tunnel: Tunnel,
    client: h11.Connection,
    answer: AnswerHeaders,
) -> None:
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            data = await tunnel.receive()
            client.receive_data(data or b"")
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            await exchange.start_raw(event.status_code, answer.of(event.headers))
        elif isinstance(event, h11.Data):
            await exchange.write(bytes(event.data))
            admission.active()
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            await exchange.write(b"", more=False)
            return
