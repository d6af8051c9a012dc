"""Moving whole files of any size through the agent in bounded chunks.

Uploads go to a temporary name beside the target as positional `write` requests, a few in
flight at once, and are renamed into place at the end, so a failed upload never leaves a
half-written file under the real name. Downloads are `read` requests with `offset` and
`length`, one at a time. Either way the agent's answers set the pace, and neither side ever
holds more than a few chunks of a file.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import trio

from ..protocol import ErrorCode, Message
from .agent import AgentLink

CHUNK_SIZE = 1024 * 1024
IN_FLIGHT = 4


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
    """Write everything `body` yields to `path` in the sandbox; returns the byte count.

    The first chunk creates the file; the rest are positional writes, up to IN_FLIGHT at
    once, so reading the body, encoding, the agent's decoding and the disk all overlap.
    """
    temporary = f"{path}.insien-upload-{secrets.token_hex(6)}"
    total = 0
    created = False

    async def write(data: bytes | bytearray, offset: int) -> None:
        message: Message = {
            "type": "write",
            "path": temporary,
            "content": base64.b64encode(data).decode("ascii"),
            "encoding": "base64",
        }
        if offset:
            message["offset"] = offset
        await _call(link, message)

    try:
        slots = trio.Semaphore(IN_FLIGHT)

        async def write_in_slot(data: bytes, offset: int) -> None:
            try:
                await write(data, offset)
            finally:
                slots.release()

        async with trio.open_nursery() as writers:
            buffer = bytearray()
            written = 0

            async def flush(data: bytes) -> None:
                nonlocal created, written
                if not created:
                    await write(data, 0)  # creates (and truncates) the file first
                    created = True
                else:
                    await slots.acquire()
                    writers.start_soon(write_in_slot, data, written)
                written += len(data)

            async for piece in body:
                total += len(piece)
                if total > limit:
                    raise TransferError(
                        ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit"
                    )
                buffer += piece
                while len(buffer) >= CHUNK_SIZE:
                    await flush(bytes(buffer[:CHUNK_SIZE]))
                    del buffer[:CHUNK_SIZE]
            if buffer or not created:
                await flush(bytes(buffer))
        await _call(link, {"type": "rename", "path": temporary, "newPath": path})
    except BaseException as exc:
        if created:
            with trio.move_on_after(5, shield=True):
                await link.call({"type": "remove", "path": temporary})
        if isinstance(exc, BaseExceptionGroup):
            # A refused chunk surfaces through the writers' nursery; report the first refusal.
            refusal = exc.subgroup(TransferError)
            if refusal is not None and len(refusal.exceptions) == len(exc.exceptions):
                raise refusal.exceptions[0] from exc
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


async def read_chunk(link: AgentLink, path: str, offset: int) -> tuple[bytes, bool]:
    """One chunk of the file at `offset`, and whether it was the last."""
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
    return data, bool(reply.get("eof", True)) or not data


async def download(
    link: AgentLink, path: str, first: tuple[bytes, bool] | None = None
) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, read at the pace the consumer takes them. `first` is
    the first chunk when the caller has read it already (to report errors before a status)."""
    offset = 0
    while True:
        data, last = first if first is not None else await read_chunk(link, path, offset)
        first = None
        if data:
            yield data
        offset += len(data)
        if last:
            return
