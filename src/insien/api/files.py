"""Streaming file transfer over REST: `PUT` and `GET /sandbox/<id>/files?path=…`.

Downloads are an ordinary Quart route with a streamed body. Uploads bypass Quart: its request
body buffers everything the server receives however slowly the route reads it, so the upload
handler sits in front of the app as plain ASGI, where each `receive()` is one bounded piece and
hypercorn stops reading the socket until it is taken. That carries the agent's pace all the way
back to the client's TCP connection.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Blueprint, Response, request

from ..link.transfer import TransferError, open_download, upload
from ..protocol import ErrorCode
from .context import Services
from .errors import CORE_ERRORS, ApiError, api_error_for
from .exchange import ClientGone, Exchange
from .openapi import operation
from .schemas import FileQuery, Uploaded

UPLOAD_PATH = re.compile(r"^/sandbox/(?P<id>[^/]+)/files$")
ASGIApp = Any


def _required_path(value: str | None) -> str:
    if not value:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "query parameter 'path' is required")
    return value


def files_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("files", __name__)

    @bp.get("/sandbox/<sandbox_id>/files")
    @operation(
        summary="Download a file (raw bytes streamed out, no base64)",
        query=FileQuery,
        answer="bytes",
        errors=(400, 404, 413, 503),
        tag="files",
    )
    async def download_file(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = _required_path(request.args.get("path"))
        admission = services.gate.for_tenant(sandbox_id, tenant)
        size, body = await open_download(admission.link, path)
        response = Response(body, mimetype="application/octet-stream")
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
        exchange = Exchange(scope, receive, send)
        try:
            status, body = 200, await self._upload(match.group("id"), exchange)
            close = False
        except (ApiError, *CORE_ERRORS) as raised:
            exc = api_error_for(raised)
            status, body = exc.status, {"code": str(exc.code), "message": exc.message}
            # The client may still be sending the body it is refused for; read a bounded
            # amount of it so it gets to see the answer, else close the connection after it.
            close = isinstance(exc, _DeclaredTooLarge) or not await exchange.discard_body()
        await exchange.respond_json(status, body, [("connection", "close")] if close else [])

    async def _upload(self, sandbox_id: str, exchange: Exchange) -> dict[str, Any]:
        services = self.services
        tenant = services.auth.tenant_for_key(exchange.headers.get("x-api-key"))
        if tenant is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")
        path = _required_path(exchange.query.get("path"))
        limit = services.settings.max_upload_bytes
        declared = exchange.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _DeclaredTooLarge(
                413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit"
            )
        admission = services.gate.for_tenant(sandbox_id, tenant)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in exchange.chunks():
                    yield chunk
            except ClientGone:
                raise TransferError(
                    ErrorCode.CANCELLED, "the client went away mid-upload"
                ) from None

        written = await upload(admission.link, path, body(), limit)
        return Uploaded(success=True, path=path, bytes=written).model_dump(mode="json")
