"""Connect RPC with the JSON codec, the part E2B's SDKs speak to envd: unary calls
(`application/json`), server streams (`application/connect+json`, 5-byte envelopes, an end
frame that carries the error), error codes with their HTTP statuses, and `Connect-Timeout-Ms`.

`connectrpc`'s own server runs only under asyncio; this is the small subset Insien needs, as
pure functions the ASGI side (`envd.py`) calls. See https://connectrpc.com/docs/protocol.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from ... import untrusted_json

UNARY_TYPE = "application/json"
STREAM_TYPE = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
ENVELOPE = struct.Struct(">BI")
MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""No envd request message is anywhere near this (file bytes go through `/files`)."""


class Code(enum.StrEnum):
    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


HTTP_STATUS: dict[Code, int] = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
"""What a unary error answers with; a stream's errors travel in its end frame under 200."""


class ConnectError(Exception):
    """An RPC failure with its Connect code; becomes a unary error body or a stream's end."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message}


def _decode_object(raw: bytes) -> dict[str, Any]:
    """One request message, through the bounded decoder: a nesting bomb or a body that is not
    JSON is `invalid_argument`, as any other malformed request."""
    try:
        message = untrusted_json.loads(raw, max_bytes=MAX_REQUEST_BYTES) if raw.strip() else {}
    except untrusted_json.JsonRefused as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"malformed request: {exc}") from None
    if not isinstance(message, dict):
        raise ConnectError(Code.INVALID_ARGUMENT, "the request must be a JSON object")
    return message


def parse_unary(body: bytes) -> dict[str, Any]:
    """A unary request's message: the whole body is the JSON object."""
    return _decode_object(body)


def parse_stream_request(body: bytes) -> dict[str, Any]:
    """A server-streaming request's message: exactly one uncompressed envelope."""
    if len(body) < ENVELOPE.size:
        raise ConnectError(Code.INVALID_ARGUMENT, "a streaming request needs one envelope")
    flags, length = ENVELOPE.unpack_from(body)
    if flags & FLAG_COMPRESSED:
        raise ConnectError(Code.UNIMPLEMENTED, "compressed messages are not supported")
    if flags & FLAG_END_STREAM or len(body) != ENVELOPE.size + length:
        raise ConnectError(Code.INVALID_ARGUMENT, "malformed request envelope")
    return _decode_object(body[ENVELOPE.size :])


async def read_stream(
    chunks: AsyncGenerator[bytes, None],
) -> AsyncGenerator[dict[str, Any], None]:
    """A client stream's messages, one envelope at a time as the body arrives (each at most
    MAX_REQUEST_BYTES, so a client cannot make the server hold more)."""
    async with aclosing(chunks) as body:
        async for message in _envelopes(body):
            yield message


async def _envelopes(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= ENVELOPE.size:
            flags, length = ENVELOPE.unpack_from(buffer)
            if length > MAX_REQUEST_BYTES:
                raise ConnectError(Code.RESOURCE_EXHAUSTED, "a stream message is too large")
            if flags & FLAG_COMPRESSED:
                raise ConnectError(Code.UNIMPLEMENTED, "compressed messages are not supported")
            if len(buffer) < ENVELOPE.size + length:
                break
            data = bytes(buffer[ENVELOPE.size : ENVELOPE.size + length])
            del buffer[: ENVELOPE.size + length]
            if flags & FLAG_END_STREAM:
                return
            yield _decode_object(data)
    if buffer:
        raise ConnectError(Code.INVALID_ARGUMENT, "the request stream ended inside a message")


def envelope(message: dict[str, Any]) -> bytes:
    """One streamed message."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return ENVELOPE.pack(0, len(data)) + data


def end_stream(error: ConnectError | None = None) -> bytes:
    """The frame that ends a stream: `{}` on success, `{"error": {...}}` otherwise."""
    data = json.dumps({"error": error.body()} if error is not None else {}).encode()
    return ENVELOPE.pack(FLAG_END_STREAM, len(data)) + data


def timeout_seconds(header: str | None) -> float | None:
    """`Connect-Timeout-Ms`: at most 10 ASCII digits of milliseconds; absent means none."""
    if header is None:
        return None
    if not (1 <= len(header) <= 10 and header.isascii() and header.isdigit()):
        raise ConnectError(Code.INVALID_ARGUMENT, "Connect-Timeout-Ms must be 1-10 digits")
    return int(header) / 1000


def is_stream_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == STREAM_TYPE


def is_unary_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == UNARY_TYPE
