"""JSON error responses: every failure a client sees is `{"code", "message"}` with a status.

This is the one place where the core's exceptions become HTTP answers (`api_error_for`): a
sandbox that is absent or someone else's is the same 404 on every route and on the WebSocket.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from ..link.transfer import TransferError
from ..protocol import ErrorCode
from ..sandboxes.access import TooManyTunnels
from ..sandboxes.errors import ImageNotFound, NotSupported, RuntimeFailure
from ..sandboxes.launcher import SandboxStartError
from ..sandboxes.manager import SandboxNotFound
from ..sandboxes.snapshots import SnapshotNotFound
from ..tenancy.quotas import QuotaExceeded


class ApiError(Exception):
    """Raise from a route to answer with this status and a structured body."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def from_quota(cls, exc: QuotaExceeded) -> ApiError:
        return cls(429, exc.code, exc.message, retry_after=exc.retry_after)


def error_response(
    status: int, code: ErrorCode | str, message: str, *, retry_after: int | None = None
) -> Response:
    response = jsonify({"code": str(code), "message": message})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


_STATUS_OF_CODE: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.IS_A_DIRECTORY: 400,
    ErrorCode.NOT_A_DIRECTORY: 400,
    ErrorCode.BAD_ENCODING: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.NOT_EMPTY: 409,
    ErrorCode.CONTEXT_DIED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.AGENT_GONE: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.CONNECTION_REFUSED: 502,
}


def error_code(value: object) -> ErrorCode:
    """A code an agent answered with, as one of ours (an agent is not trusted to know them)."""
    return ErrorCode(value) if value in _KNOWN_CODES else ErrorCode.INTERNAL


_KNOWN_CODES = frozenset(str(code) for code in ErrorCode)


def status_for(code: str) -> int:
    """The HTTP status that carries a protocol error code over REST."""
    return _STATUS_OF_CODE.get(code, 500)


_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.TOO_LARGE,
}


CORE_ERRORS = (
    SandboxNotFound,
    SnapshotNotFound,
    QuotaExceeded,
    ImageNotFound,
    NotSupported,
    RuntimeFailure,
    SandboxStartError,
    TransferError,
    TooManyTunnels,
)
"""What the core and the link raise that a client hears about; see `api_error_for`."""


def api_error_for(exc: Exception) -> ApiError:
    """The HTTP answer for an exception of the core or the link."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SandboxNotFound):
        return ApiError(404, ErrorCode.NOT_FOUND, f"no sandbox {exc.args[0]!r}")
    if isinstance(exc, SnapshotNotFound):
        return ApiError(404, ErrorCode.NOT_FOUND, f"no snapshot {exc.args[0]!r}")
    if isinstance(exc, QuotaExceeded):
        return ApiError.from_quota(exc)
    if isinstance(exc, ImageNotFound):
        return ApiError(503, ErrorCode.UNAVAILABLE, f"sandbox image missing: {exc}")
    if isinstance(exc, NotSupported):
        return ApiError(501, ErrorCode.NOT_SUPPORTED, str(exc))
    if isinstance(exc, (RuntimeFailure, SandboxStartError)):
        return ApiError(503, ErrorCode.UNAVAILABLE, str(exc))
    if isinstance(exc, TransferError):
        return ApiError(status_for(exc.code), error_code(exc.code), exc.message)
    if isinstance(exc, TooManyTunnels):
        return ApiError(429, ErrorCode.BUSY, str(exc), retry_after=1)
    return ApiError(500, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def answer_for(exc: Exception) -> Response:
    error = api_error_for(exc)
    return error_response(error.status, error.code, error.message, retry_after=error.retry_after)


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Any:
        return answer_for(exc)

    for kind in CORE_ERRORS:

        @app.errorhandler(kind)
        async def _core_error(exc: Exception) -> Any:
            return answer_for(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = _HTTP_CODES.get(
            status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL
        )
        return error_response(status, code, exc.description or exc.name)
