"""Streaming file transfer over REST: `PUT` and `GET /sandbox/<id>/files?path=…`.

Downloads are an ordinary Quart route with a streamed body. Uploads bypass Quart: its request
body buffers everything the server receives however slowly the route reads it, so the upload
handler sits in front of the app as plain ASGI, where each `receive()` is one bounded piece and
hypercorn stops reading the socket until it is taken. That carries the agent's pace all the way
back to the client's TCP connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)
from quart import Blueprint, Response, request

from ..link.transfer import TransferError, download, file_size, read_chunk, upload
from ..protocol import ErrorCode
from .context import Services
from .errors import CORE_ERRORS, ApiError, api_error_for

UPLOAD_PATH = re.compile(r"^/sandbox/(?P<id>[^/]+)/files$")
DISCARD_LIMIT = 16 * 1024 * 1024
DISCARD_SECONDS = 5.0
ASGIApp = Any


def _required_path(value: str | None) -> str:
    if not value:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "query parameter 'path' is required")
    return value


def files_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("files", __name__)

    @bp.get("/sandbox/<sandbox_id>/files")
    async def download_file(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = _required_path(request.args.get("path"))
        sandbox = services.manager.get(sandbox_id, tenant)
        sandbox.touch()
        link = sandbox.link
        size = await file_size(link, path)
        # The first chunk is read before the status line: an error that can be known
        # (permission, a file that cannot be read) is a proper error answer, not a 200
        # followed by a cut body.
        first = await read_chunk(link, path, 0)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in download(link, path, first):
                yield chunk

        response = Response(body(), mimetype="application/octet-stream")
        response.headers["X-Insien-File-Size"] = str(size)
        return response

    return bp


class _DeclaredTooLarge(ApiError):
    """Refused on its Content-Length alone: nothing of its body is worth reading."""


class UploadMiddleware:
    """Handles `PUT /sandbox/<id>/files` as raw ASGI; everything else goes to the app."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        match = UPLOAD_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["type"] != "http" or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        try:
            status, body = 200, await self._upload(match.group("id"), scope, receive)
            close = False
        except (ApiError, *CORE_ERRORS) as raised:
            exc = api_error_for(raised)
            status, body = exc.status, {"code": str(exc.code), "message": exc.message}
            # The client may still be sending the body it is refused for; read a bounded
            # amount of it so it gets to see the answer, else close the connection after it.
            close = isinstance(exc, _DeclaredTooLarge) or not await _discard_body(receive)
        await _send_json(send, status, body, close=close)

    async def _upload(
        self, sandbox_id: str, scope: HTTPScope, receive: ASGIReceiveCallable
    ) -> dict[str, Any]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        services = self.services
        tenant = services.auth.tenant_for_key(headers.get("x-api-key"))
        if tenant is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        path = _required_path(query.get("path", [""])[0])
        limit = services.settings.max_upload_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _DeclaredTooLarge(
                413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit"
            )
        sandbox = services.manager.get(sandbox_id, tenant)
        sandbox.touch()
        link = sandbox.link

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise TransferError(ErrorCode.CANCELLED, "the client went away mid-upload")
                if message["body"]:
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return

        written = await upload(link, path, body(), limit)
        return {"success": True, "path": path, "bytes": written}


async def _discard_body(receive: ASGIReceiveCallable) -> bool:
    """Read and drop what is left of a refused request's body; False if it was too much."""
    left = DISCARD_LIMIT
    with trio.move_on_after(DISCARD_SECONDS):
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return False
            left -= len(message["body"])
            if not message.get("more_body", False):
                return True
    return False


async def _send_json(
    send: ASGISendCallable, status: int, body: dict[str, Any], *, close: bool = False
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
        "trailers": False,
    }
    await send(start)
    body_event: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": payload,
        "more_body": False,
    }
    await send(body_event)
