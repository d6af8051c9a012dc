"""Moving whole files of any size through the agent in bounded chunks.

Uploads go to a temporary name beside the target, one chunk per `write` (append) request, and
are renamed into place at the end, so a failed upload never leaves a half-written file under
the real name. Downloads are `read` requests with `offset` and `length`. Each chunk waits for
the agent's answer before the next is sent: the agent sets the pace and neither side ever
holds more than a chunk or two of a file.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import trio

from .link import AgentLink
from .protocol import ErrorCode, Message

CHUNK_SIZE = 1024 * 1024


class TransferError(Exception):
    """The agent refused a step of a transfer; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _call(link: AgentLink, message: Message) -> Message:
    reply = await link.call(message)
    if reply.get("type") == "error":
        raise TransferError(str(reply.get("code")), str(reply.get("message")))
    return reply


async def upload(link: AgentLink, path: str, body: AsyncIterator[bytes], limit: int) -> int:
    """Write everything `body` yields to `path` in the sandbox; returns the byte count."""
    temporary = f"{path}.insien-upload-{secrets.token_hex(6)}"
    total = 0
    started = False
    buffer = bytearray()

    async def flush(data: bytes | bytearray) -> None:
        nonlocal started
        await _call(
            link,
            {
                "type": "write",
                "path": temporary,
                "content": base64.b64encode(data).decode("ascii"),
                "encoding": "base64",
                "append": started,
            },
        )
        started = True

    try:
        async for piece in body:
            total += len(piece)
            if total > limit:
                raise TransferError(ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit")
            buffer += piece
            while len(buffer) >= CHUNK_SIZE:
                await flush(buffer[:CHUNK_SIZE])
                del buffer[:CHUNK_SIZE]
        await flush(buffer)
        await _call(link, {"type": "rename", "path": temporary, "newPath": path})
    except BaseException:
        if started:
            with trio.move_on_after(5, shield=True):
                await link.call({"type": "remove", "path": temporary})
        raise
    return total


async def file_size(link: AgentLink, path: str) -> int:
    """The size of a regular file, refusing directories and special files up front."""
    entry = (await _call(link, {"type": "stat", "path": path}))["entry"]
    if entry["type"] == "dir":
        raise TransferError(ErrorCode.IS_A_DIRECTORY, f"is a directory: {path}")
    if entry["type"] != "file":
        raise TransferError(ErrorCode.BAD_REQUEST, f"not a regular file: {path}")
    return int(entry["size"])


async def download(link: AgentLink, path: str) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, read at the pace the consumer takes them."""
    offset = 0
    while True:
        reply: dict[str, Any] = await _call(
            link,
            {
                "type": "read",
                "path": path,
                "offset": offset,
                "length": CHUNK_SIZE,
                "encoding": "base64",
            },
        )
        data = base64.b64decode(reply["content"])
        if data:
            yield data
        offset += len(data)
        if reply.get("eof", True) or not data:
            return
