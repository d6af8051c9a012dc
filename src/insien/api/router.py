"""Where each request goes, decided once: `route` reads a request's scope (pure, unit-tested)
and `Router`, the one raw-ASGI layer in front of Quart, hands it to what serves it.

A request is for a sandbox's envd (E2B's processes, filesystem and `/files`, and the code
interpreter's port), for a program on one of its ports, a streamed upload (a sandbox's or a
volume's file, E2B's volume content, a template build's files), or else for Insien's own
routes in Quart. A sandbox is named by the host (`<port>-<sandboxId>.<INSIEN_DOMAIN>`, E2B's
domain routing behind wildcard DNS), by E2B's headers under `/e2b` (`E2b-Sandbox-Id` and
`E2b-Sandbox-Port`), by a preview path (`/sandbox/<id>/ports/<port>/...`), or, for a signed
file URL made in path mode, by nothing but its signature (envd.py finds the sandbox). The
layers around the router (request ids, CORS, the body deadline, the metrics listener) route
nothing."""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from .context import Services
from .e2b.envd import ENVD_PORT, INTERPRETER_PORT, EnvdFront
from .e2b.templates import UPLOADS as TEMPLATE_UPLOADS
from .e2b.templates import serve_upload as serve_template_upload
from .e2b.volumes import UPLOAD as E2B_VOLUME_UPLOAD
from .e2b.volumes import serve_volume_upload as serve_e2b_volume_upload
from .exchange import Exchange
from .files import UPLOAD_PATH as SANDBOX_UPLOAD
from .files import serve_sandbox_upload
from .preview import PREVIEW_PATH, PreviewProxy
from .volumes import UPLOAD_PATH as VOLUME_UPLOAD
from .volumes import serve_volume_upload

E2B = "/e2b"
FILES = "/files"
SANDBOX_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
ENVD_PORTS = (ENVD_PORT, INTERPRETER_PORT)


@dataclass(frozen=True)
class ToEnvd:
    """envd's API (or the interpreter's) of a sandbox; `sandbox_id` is empty for a signed file
    URL that names none."""

    sandbox_id: str
    port: int
    path: str


@dataclass(frozen=True)
class ToPort:
    """HTTP or a WebSocket to the program on `port`; `prefix` is where the client sees the app
    mounted, `own_origin` whether it came for the port's own host."""

    sandbox_id: str
    port: int
    path: str
    prefix: str
    own_origin: bool


class UploadKind(enum.Enum):
    SANDBOX_FILE = "sandbox file"
    VOLUME_FILE = "volume file"
    E2B_VOLUME_CONTENT = "E2B volume content"
    TEMPLATE_FILES = "template build files"


@dataclass(frozen=True)
class ToUpload:
    """A body streamed to its destination instead of read whole by Quart."""

    kind: UploadKind
    ref: str


@dataclass(frozen=True)
class ToApp:
    """Insien's own routes (Quart)."""


Route = ToEnvd | ToPort | ToUpload | ToApp


def host_route(host: str, domain: str) -> tuple[str, int] | None:
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


def _for_sandbox(sandbox_id: str, port: int, path: str, *, own_origin: bool, socket: bool) -> Route:
    """A request named for a sandbox's port: envd's ports (and any number that is no port)
    are envd's over HTTP, and envd has no WebSockets; every other port is the program's."""
    if port in ENVD_PORTS or not 1 <= port <= 65535:
        return ToApp() if socket else ToEnvd(sandbox_id, port, path)
    return ToPort(sandbox_id, port, path, "", own_origin)


def route(scope: Scope, domain: str | None) -> Route:
    """Where the request `scope` describes goes (see the module's docstring)."""
    if scope["type"] not in ("http", "websocket"):
        return ToApp()
    socket = scope["type"] == "websocket"
    path = scope["path"]
    headers = {k.lower(): v for k, v in scope["headers"]}
    if domain is not None:
        target = host_route(headers.get(b"host", b"").decode("latin-1"), domain)
        if target is not None:
            return _for_sandbox(*target, path, own_origin=True, socket=socket)
    under_e2b = path == E2B or path.startswith(E2B + "/")
    # The SDKs' file URLs join `/files` to E2B_SANDBOX_URL as an absolute path, so they
    # arrive without the prefix.
    if under_e2b or (path == FILES and not socket):
        sandbox_id = headers.get(b"e2b-sandbox-id")
        port = headers.get(b"e2b-sandbox-port")
        if sandbox_id is not None and (port is not None or not socket):
            number = int(port) if port is not None and port.isdigit() else -1
            if port is None:
                number = ENVD_PORT
            inner = (path[len(E2B) :] if under_e2b else path) or "/"
            return _for_sandbox(
                sandbox_id.decode("latin-1"), number, inner, own_origin=False, socket=socket
            )
        if not socket and path in (FILES, E2B + FILES) and b"signature=" in scope["query_string"]:
            return ToEnvd("", ENVD_PORT, FILES)
    if scope["type"] != "http":
        preview = PREVIEW_PATH.match(path)
        # `/tcp` itself is the raw TCP WebSocket (ports.py), one of Insien's own routes.
        if preview is not None and preview.group("rest") != "/tcp":
            return _preview(preview)
        return ToApp()
    put = scope["method"] == "PUT"
    if put and (found := E2B_VOLUME_UPLOAD.match(path)):
        return ToUpload(UploadKind.E2B_VOLUME_CONTENT, found.group("volume"))
    if path.startswith(E2B + TEMPLATE_UPLOADS):
        return ToUpload(UploadKind.TEMPLATE_FILES, path[len(E2B + TEMPLATE_UPLOADS) :])
    if preview := PREVIEW_PATH.match(path):
        return _preview(preview)
    if put and (found := VOLUME_UPLOAD.match(path)):
        return ToUpload(UploadKind.VOLUME_FILE, found.group("name"))
    if put and (found := SANDBOX_UPLOAD.match(path)):
        return ToUpload(UploadKind.SANDBOX_FILE, found.group("id"))
    return ToApp()


def _preview(found: re.Match[str]) -> ToPort:
    sandbox_id, port = found.group("id"), int(found.group("port"))
    prefix = f"/sandbox/{sandbox_id}/ports/{port}"
    return ToPort(sandbox_id, port, found.group("rest") or "/", prefix, own_origin=False)


UPLOADS: dict[UploadKind, Callable[[Services, Exchange, str], Awaitable[None]]] = {
    UploadKind.SANDBOX_FILE: serve_sandbox_upload,
    UploadKind.VOLUME_FILE: serve_volume_upload,
    UploadKind.E2B_VOLUME_CONTENT: serve_e2b_volume_upload,
    UploadKind.TEMPLATE_FILES: serve_template_upload,
}


class Router:
    """The ASGI layer that carries out `route`: Quart gets only what is its own."""

    def __init__(self, app: ASGIFramework, services: Services) -> None:
        self.app = app
        self.services = services
        self.envd = EnvdFront(services)
        self.ports = PreviewProxy(services)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        where = route(scope, self.services.settings.domain)
        if isinstance(where, ToEnvd):
            assert scope["type"] == "http"
            exchange = Exchange(scope, receive, send)
            exchange.path = where.path
            await self.envd.serve(exchange, where.sandbox_id, where.port)
        elif isinstance(where, ToPort) and scope["type"] == "websocket":
            await self.ports.serve_websocket(
                scope, receive, send, where.sandbox_id, where.port, where.path, where.prefix
            )
        elif isinstance(where, ToPort):
            assert scope["type"] == "http"
            await self.ports.serve(
                Exchange(scope, receive, send),
                where.sandbox_id,
                where.port,
                where.path,
                where.prefix,
                own_origin=where.own_origin,
            )
        elif isinstance(where, ToUpload):
            assert scope["type"] == "http"
            await UPLOADS[where.kind](self.services, Exchange(scope, receive, send), where.ref)
        else:
            await self.app(scope, receive, send)
