"""Moving whole files of any size through the agent in bounded chunks.

Uploads go to a temporary name beside the target as positional `write` requests, a few in
flight at once, and are renamed into place at the end, so a failed upload never leaves a
half-written file under the real name. Downloads are `read` requests with `offset` and
`length`, a few chunks ahead of the consumer. Either way the agent's answers set the pace, and
neither side ever holds more than a few chunks of a file. File content travels as raw binary
frames on each request's channel, never as base64.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import trio

from ..protocol import ErrorCode, Message
from .agent import AgentLink
from .frames import MAX_FRAME
from .pending import PendingRequest

WRITE_CHUNK = MAX_FRAME
"""Bytes per `write`: one data frame."""
READ_CHUNK = 2 * MAX_FRAME
"""Bytes per `read`: the agent answers with several frames."""
IN_FLIGHT = 4
READ_AHEAD = 3


class TransferError(Exception):
    """The agent refused a step of a transfer; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


FRAME_LOST = "no data frame came for channel"
"""How the agent refuses a `write` whose data frame it never got: on the bulk socket, one
lost with it (the agent's bulk.py)."""


async def _call(link: AgentLink, message: Message, payload: bytes | None = None) -> Message:
    if payload is None:
        reply = await link.call(message)
    else:
        reply = await _send(link, message, payload, bulk=True)
        if (
            reply.get("type") == "error"
            and str(reply.get("message", "")).startswith(FRAME_LOST)
            and not link.bulk_attached
        ):
            # Its frame went with a bulk socket that broke: the same positional write again,
            # on stdio this time.
            reply = await _send(link, message, payload, bulk=False)
    if reply.get("type") == "error":
        raise TransferError(str(reply.get("code")), str(reply.get("message")))
    return reply


async def _send(link: AgentLink, message: Message, payload: bytes, *, bulk: bool) -> Message:
    async with link.request(message, payload=payload, bulk=bulk) as pending:
        reply = link.missing_reply(None)
        async for answer in pending:
            reply = answer.message
    return reply


async def upload(
    link: AgentLink, path: str, body: AsyncIterator[bytes], limit: int, *, in_place: bool = False
) -> int:
    """Write everything `body` yields to `path` in the sandbox; returns the byte count.

    The first chunk creates the file; the rest are positional writes, up to IN_FLIGHT at
    once, so reading the body, encoding, the agent's decoding and the disk all overlap.
    `in_place` writes the file itself, as E2B's envd does (its watchers see that file written;
    a cut upload leaves what arrived), instead of a temporary name renamed into place.
    """
    temporary = path if in_place else f"{path}.insien-upload-{secrets.token_hex(6)}"
    total = 0
    created = False

    async def write(data: bytes, offset: int) -> None:
        message: Message = {"type": "write", "path": temporary}
        if offset:
            message["offset"] = offset
        await _call(link, message, payload=data)

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
                while len(buffer) >= WRITE_CHUNK:
                    with memoryview(buffer) as view:
                        chunk = bytes(view[:WRITE_CHUNK])  # one copy, not a slice and a copy
                    del buffer[:WRITE_CHUNK]
                    await flush(chunk)
            if buffer or not created:
                await flush(bytes(buffer))
        if not in_place:
            await _call(link, {"type": "rename", "path": temporary, "newPath": path})
    except BaseException as exc:
        if created and not in_place:
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


def _read_message(path: str, offset: int) -> Message:
    return {"type": "read", "path": path, "offset": offset, "length": READ_CHUNK}


async def _collect(pending: PendingRequest) -> tuple[list[bytes], bool]:
    """The bytes of one binary `read` (its data frames, as they came: never joined into a
    copy), and whether it reached the end."""
    pieces: list[bytes] = []
    reply: Message = pending.link.missing_reply(None)
    async for answer in pending:
        pending.release(answer)
        if answer.data is not None:
            pieces.append(answer.data)
        else:
            reply = answer.message
    if reply.get("type") == "error":
        raise TransferError(str(reply.get("code")), str(reply.get("message")))
    size = sum(len(piece) for piece in pieces)
    if size != reply.get("bytes"):
        raise TransferError(ErrorCode.INTERNAL, "the agent's frames did not add up to its answer")
    return pieces, bool(reply.get("eof", True)) or not size


async def read_chunk(link: AgentLink, path: str, offset: int) -> tuple[list[bytes], bool]:
    """One chunk of the file at `offset`, and whether it was the last."""
    async with link.request(_read_message(path, offset), binary=True) as pending:
        return await _collect(pending)


class _ReadAhead:
    """Reads of the next chunks, asked for before they are needed, so the agent's disk reads
    and the link overlap with sending the chunk before. At most READ_AHEAD are open; each is a
    `link.request` entered and left by hand, because the download is an async generator and
    must not hold a nursery across its yields."""

    def __init__(self, link: AgentLink, path: str, offset: int) -> None:
        self._link = link
        self._path = path
        self._next = offset
        self._open: deque[tuple[AsyncExitStack, PendingRequest]] = deque()

    async def fill(self) -> None:
        while len(self._open) < READ_AHEAD:
            stack = AsyncExitStack()
            message = _read_message(self._path, self._next)
            pending = await stack.enter_async_context(self._link.request(message, binary=True))
            self._open.append((stack, pending))
            self._next += READ_CHUNK

    async def take(self) -> tuple[list[bytes], bool]:
        stack, pending = self._open.popleft()
        async with stack:
            return await _collect(pending)

    async def restart(self, offset: int) -> None:
        """The file was shorter than a chunk where it should not be: ask again from here."""
        await self.close()
        self._next = offset

    async def close(self) -> None:
        """Leave every open read (those not answered are cancelled in the agent)."""
        while self._open:
            stack, _ = self._open.popleft()
            await stack.aclose()


async def download(
    link: AgentLink, path: str, first: tuple[list[bytes], bool] | None = None
) -> AsyncIterator[bytes]:
    """The file's bytes, frame by frame, read at the pace the consumer takes them (READ_AHEAD
    chunks ahead of it). `first` is the first chunk when the caller has read it already (to
    report errors before a status)."""
    pieces, last = first if first is not None else await read_chunk(link, path, 0)
    offset = 0
    for piece in pieces:
        offset += len(piece)
        if piece:  # an empty piece would end a chunked body
            yield piece
    if last:
        return
    ahead = _ReadAhead(link, path, offset)
    try:
        while True:
            await ahead.fill()
            pieces, last = await ahead.take()
            size = 0
            for piece in pieces:
                size += len(piece)
                if piece:
                    yield piece
            offset += size
            if last:
                return
            if size != READ_CHUNK:
                await ahead.restart(offset)
    finally:
        with trio.CancelScope(shield=True):
            await ahead.close()


async def open_download(link: AgentLink, path: str) -> tuple[int, AsyncIterator[bytes]]:
    """A file's size and its bytes. What can be known before the first byte (a missing file,
    permission, not a regular file) raises TransferError here, so a caller can still answer
    with a proper error instead of a success status followed by a cut body."""
    size = await file_size(link, path)
    first = await read_chunk(link, path, 0)
    return size, download(link, path, first)
