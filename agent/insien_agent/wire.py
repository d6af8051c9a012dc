"""Framing of the agent's stdio: bounded line reading in, serialised JSON lines out."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from typing import Any, Protocol


class LineSplitter:
    """Splits a byte stream into lines without ever holding more than `max_line` bytes.

    A line longer than the limit is dropped (its bytes are discarded up to the next newline)
    and reported once as `None`, so the caller can answer with an error and carry on.
    """

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes | None]:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            piece = data[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(self._buffer) + len(piece) > self._max_line:
                self._buffer.clear()
                yield None
                continue
            self._buffer += piece
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line
        rest = data[start:]
        if self._discarding:
            return
        if len(self._buffer) + len(rest) > self._max_line:
            self._buffer.clear()
            self._discarding = True
            yield None
            return
        self._buffer += rest


PIPE_SIZE = 1024 * 1024


def widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux's default is 64 KiB): fewer, larger reads and writes
    move bulk output with far fewer wake-ups. Not a pipe, or not allowed: nothing changes."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, set_size, PIPE_SIZE)


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line. ASCII-escaped: in the CPython 3.11 that Debian ships, encoding
    with ensure_ascii=False is about 4x slower, and output streaming spends its time here."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Sink(Protocol):
    """What Outbox writes to: an asyncio StreamWriter, or FileSink."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class FileSink:
    """Stdout redirected to a regular file: writes never block, so plain writes suffice."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def drain(self) -> None:
        return None


async def open_stdout() -> Sink:
    """A non-blocking writer on fd 1 when it is a pipe or socket (as under Docker)."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", closefd=False)
        )
    except ValueError:
        return FileSink(1)
    return asyncio.StreamWriter(transport, protocol, None, loop)


class Outbox:
    """The one path to stdout: every message is written whole, in order, with back-pressure."""

    def __init__(self, writer: Sink, max_line: int) -> None:
        self._writer = writer
        self._max_line = max_line

    async def send(self, message: dict[str, Any]) -> None:
        line = encode(message)
        if len(line) > self._max_line:
            # The orchestrator would drop an oversize line without knowing whose answer it was;
            # answer the request with an error instead so it never hangs.
            line = encode(
                {
                    "id": message.get("id"),
                    "type": "error",
                    "code": "TOO_LARGE",
                    "message": f"response of {len(line)} bytes exceeds the {self._max_line}"
                    " byte message limit",
                }
            )
        self._writer.write(line)
        await self._writer.drain()
