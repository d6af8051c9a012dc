"""Which E2B requests are for a sandbox: under `/e2b`, those that carry `E2b-Sandbox-Id` (and
`E2b-Sandbox-Port`) go to envd's side, the rest to the control plane routes; with
`INSIEN_DOMAIN` set, a request for host `<port>-<sandboxId>.<domain>` is for that sandbox
whatever its path (E2B_DOMAIN's routing, behind wildcard DNS). Ports other than envd's (and
the code interpreter's) are HTTP to the program listening on them (`preview.py`)."""

from __future__ import annotations

import re

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
    WebsocketScope,
)

from ..exchange import Exchange
from ..preview import PreviewProxy
from .envd import ENVD_PORT, INTERPRETER_PORT, EnvdFront
from .templates import UPLOADS, serve_upload
from .volumes import UPLOAD as VOLUME_UPLOAD
from .volumes import serve_volume_upload

PREFIX = "/e2b"
FILES = "/files"
SANDBOX_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _host_route(host: str, domain: str) -> tuple[str, int] | None:
    """`49983-abc123.sandboxes.example.com` -> ("abc123", 49983) under that domain. A domain
    named without a port matches hosts on any port (`8000-abc123.localhost:3000`)."""
    host = host.lower()
    name, colon, port = host.rpartition(":")
    if ":" not in domain and colon and port.isdigit():
        host = name
    suffix = "." + domain.lower()
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    port, dash, sandbox_id = label.partition("-")
    if not dash or not port.isdigit() or not SANDBOX_ID.fullmatch(sandbox_id):
        return None
    return sandbox_id, int(port)


class E2BRouter:
    """ASGI middleware in front of the app: sandbox-bound E2B requests to `EnvdFront`."""

    def __init__(
        self, app: ASGIFramework, envd: EnvdFront, domain: str | None, ports: PreviewProxy
    ) -> None:
        self.app = app
        self.envd = envd
        self.domain = domain
        self.ports = ports

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        exchange: Exchange | None = None
        target: tuple[str, int] | None = None
        if self.domain is not None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            target = _host_route(host, self.domain)
            if target is not None:
                exchange = Exchange(scope, receive, send)
        by_host = target is not None  # the port's own origin, not the API's
        # The SDKs' file URLs (`upload_url`, `download_url`) join `/files` to E2B_SANDBOX_URL
        # as an absolute path, so they arrive without the prefix.
        prefixed = path == PREFIX or path.startswith(PREFIX + "/")
        if target is None and (prefixed or path == FILES):
            headers = {k.lower(): v for k, v in scope["headers"]}
            sandbox_id = headers.get(b"e2b-sandbox-id")
            if sandbox_id is not None:
                port = headers.get(b"e2b-sandbox-port", str(ENVD_PORT).encode())
                target = (
                    sandbox_id.decode("latin-1"),
                    int(port) if port.isdigit() else -1,
                )
                exchange = Exchange(scope, receive, send)
                exchange.path = (path[len(PREFIX) :] if prefixed else path) or "/"
            elif path in (FILES, PREFIX + FILES) and b"signature=" in scope["query_string"]:
                # A signed file URL made in path mode (E2B_SANDBOX_URL, no INSIEN_DOMAIN)
                # names no sandbox; the envd front finds it by who signed the URL.
                target = ("", ENVD_PORT)
                exchange = Exchange(scope, receive, send)
                exchange.path = FILES
        upload = VOLUME_UPLOAD.match(path) if scope["method"] == "PUT" else None
        if exchange is None and upload is not None:  # E2B's volume content, streamed in
            await serve_volume_upload(self.envd.services, Exchange(scope, receive, send), upload[1])
            return
        if exchange is None and path.startswith(PREFIX + UPLOADS):
            # a template build's files, PUT by the SDK to the link it was given (streamed)
            token = path[len(PREFIX + UPLOADS) :]
            await serve_upload(self.envd.services, Exchange(scope, receive, send), token)
            return
        if exchange is None or target is None:
            await self.app(scope, receive, send)
            return
        wanted, number = target
        if number in (ENVD_PORT, INTERPRETER_PORT) or not 1 <= number <= 65535:
            await self.envd.serve(exchange, wanted, number)
        else:  # any other port: HTTP to the program listening on it
            await self.ports.serve(exchange, wanted, number, exchange.path, "", own_origin=by_host)

    async def _websocket(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """A WebSocket for a sandbox's port by host or by E2B's headers goes to the app on it;
        envd has no WebSockets, so everything else is the app's (Insien's own routes)."""
        headers = {k.lower(): v for k, v in scope["headers"]}
        target: tuple[str, int] | None = None
        path = scope["path"]
        if self.domain is not None:
            target = _host_route(headers.get(b"host", b"").decode("latin-1"), self.domain)
        if target is None and (path == PREFIX or path.startswith(PREFIX + "/")):
            sandbox_id, port = headers.get(b"e2b-sandbox-id"), headers.get(b"e2b-sandbox-port")
            if sandbox_id is not None and port is not None and port.isdigit():
                target = (sandbox_id.decode("latin-1"), int(port))
                path = path[len(PREFIX) :] or "/"
        if target is None or target[1] in (ENVD_PORT, INTERPRETER_PORT):
            await self.app(scope, receive, send)
            return
        await self.ports.serve_websocket(scope, receive, send, target[0], target[1], path, "")
