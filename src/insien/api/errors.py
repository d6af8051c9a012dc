"""JSON error responses: every failure a client sees is `{"code", "message"}` with a status."""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from ..protocol import ErrorCode
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
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.AGENT_GONE: 503,
    ErrorCode.UNAVAILABLE: 503,
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


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Any:
        return error_response(exc.status, exc.code, exc.message, retry_after=exc.retry_after)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = _HTTP_CODES.get(
            status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL
        )
        return error_response(status, code, exc.description or exc.name)
