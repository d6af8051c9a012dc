"""Streaming file transfer over REST: `PUT` and `GET /sandbox/<id>/files?path=…`.

Downloads are an ordinary Quart route with a streamed body. Uploads bypass Quart: its request
body buffers everything the server receives however slowly the route reads it, so the router
(router.py) hands uploads to `serve_sandbox_upload` as plain ASGI, where each `receive()` is
one bounded piece and hypercorn stops reading the socket until it is taken. That carries the
agent's pace all the way back to the client's TCP connection.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from quart import Blueprint, Response, request

from ..link.transfer import TransferError, open_download, upload
from ..protocol import ErrorCode
from .context import Services
from .errors import CORE_ERRORS, ApiError, api_error_for
from .exchange import ClientGone, Exchange
from .openapi import operation
from .schemas import FileQuery, Uploaded

UPLOAD_PATH = re.compile(r"^/sandbox/(?P<id>[^/]+)/files$")


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


class DeclaredTooLarge(ApiError):
    """Refused on its Content-Length alone: nothing of its body is worth reading."""


async def answer_upload(
    exchange: Exchange,
    work: Callable[[], Awaitable[dict[str, Any]]],
    refused: tuple[type[Exception], ...],
    error_for: Callable[[Exception], ApiError],
) -> None:
    """Answer a streamed upload: 200 and what `work` returns, or the error it was refused
    with. A client may still be sending the body it is refused for: a bounded amount of it is
    read so that it gets to see the answer, else the connection closes after the answer."""
    try:
        status, body = 200, await work()
        close = False
    except refused as raised:
        exc = error_for(raised)
        status, body = exc.status, {"code": str(exc.code), "message": exc.message}
        close = isinstance(exc, DeclaredTooLarge) or not await exchange.discard_body()
    await exchange.respond_json(status, body, [("connection", "close")] if close else [])


async def serve_sandbox_upload(services: Services, exchange: Exchange, sandbox_id: str) -> None:
    """`PUT /sandbox/<id>/files?path=…`: the body streamed into the sandbox at its pace."""
    await answer_upload(
        exchange,
        lambda: _upload(services, sandbox_id, exchange),
        (ApiError, *CORE_ERRORS),
        api_error_for,
    )


async def _upload(services: Services, sandbox_id: str, exchange: Exchange) -> dict[str, Any]:
    tenant = services.auth.tenant_for_key(exchange.headers.get("x-api-key"))
    if tenant is None:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")
    path = _required_path(exchange.query.get("path"))
    limit = services.settings.max_upload_bytes
    declared = exchange.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise DeclaredTooLarge(413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit")
    admission = services.gate.for_tenant(sandbox_id, tenant)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in exchange.chunks():
                yield chunk
        except ClientGone:
            raise TransferError(ErrorCode.CANCELLED, "the client went away mid-upload") from None

    written = await upload(admission.link, path, body(), limit)
    return Uploaded(success=True, path=path, bytes=written).model_dump(mode="json")
