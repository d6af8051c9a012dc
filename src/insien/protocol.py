"""The RPC protocol: error codes and the client messages, defined once for the whole server.

The same shapes travel on the client WebSocket and on the agent's stdio. The server validates
what clients send before it reaches an agent; the agent validates again on its side.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

PROTOCOL_VERSION = 1


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    IS_A_DIRECTORY = "IS_A_DIRECTORY"
    NOT_A_DIRECTORY = "NOT_A_DIRECTORY"
    TOO_LARGE = "TOO_LARGE"
    BAD_ENCODING = "BAD_ENCODING"
    BUSY = "BUSY"
    AGENT_GONE = "AGENT_GONE"
    INTERNAL = "INTERNAL"
    # REST-only
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_READY = "NOT_READY"
    UNAVAILABLE = "UNAVAILABLE"


RequestId = StrictStr | StrictInt
Message = dict[str, Any]


def error_message(request_id: RequestId | None, code: ErrorCode, message: str) -> Message:
    return {"id": request_id, "type": "error", "code": str(code), "message": message}


class _Request(BaseModel):
    # Unknown extra fields pass through to the agent, so newer clients can talk to older servers.
    model_config = ConfigDict(extra="allow", strict=True)
    id: RequestId


class ExecRequest(_Request):
    type: Literal["exec"]
    cmd: Annotated[StrictStr, Field(min_length=1)]
    args: list[StrictStr] = []
    cwd: StrictStr | None = None
    env: dict[StrictStr, StrictStr] | None = None


class WriteRequest(_Request):
    type: Literal["write"]
    path: Annotated[StrictStr, Field(min_length=1)]
    content: StrictStr
    encoding: Literal["utf-8", "base64"] = "utf-8"


class ReadRequest(_Request):
    type: Literal["read"]
    path: Annotated[StrictStr, Field(min_length=1)]
    encoding: Literal["utf-8", "base64"] = "utf-8"


ClientRequest = Annotated[ExecRequest | WriteRequest | ReadRequest, Field(discriminator="type")]
REQUEST_TYPES = frozenset({"exec", "write", "read"})
_request_adapter: TypeAdapter[ExecRequest | WriteRequest | ReadRequest] = TypeAdapter(ClientRequest)

# A message of one of these types ends its request; anything else is an event along the way.
TERMINAL_TYPES = frozenset({"execResponse", "writeResponse", "readResponse", "error"})


class ProtocolError(Exception):
    """A client message the server refuses; becomes an `error` message with this code."""

    def __init__(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code
        self.message = message

    def to_message(self) -> Message:
        return error_message(self.request_id, self.code, self.message)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "message"
    return f"field {where!r}: {first['msg']}"


def parse_request(raw: object) -> Message:
    """Validate one decoded client message; returns it as a plain dict ready for the agent."""
    if not isinstance(raw, dict):
        raise ProtocolError(None, ErrorCode.BAD_REQUEST, "message must be a JSON object")
    request_id = raw.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise ProtocolError(None, ErrorCode.BAD_REQUEST, "field 'id' must be a string or integer")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(request_id, ErrorCode.BAD_REQUEST, "field 'type' must be a string")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(request_id, ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
    try:
        request = _request_adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(request_id, ErrorCode.BAD_REQUEST, _describe(exc)) from None
    return request.model_dump(mode="json", exclude_unset=True)
