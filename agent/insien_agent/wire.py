"""Framing of the agent's stdio: bounded line reading in, serialised JSON lines out."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections import deque
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


def pipe_fileno(reader: asyncio.StreamReader) -> int | None:
    """The file descriptor under a pipe's StreamReader, or None if it has none (any more).

    asyncio keeps it in the reader's private `_transport`: this is the one place that reads it,
    and tests/unit/test_agent_wire.py fails if a Python release stops providing it."""
    transport = getattr(reader, "_transport", None)
    if transport is None:
        return None
    pipe = transport.get_extra_info("pipe")
    try:
        return int(pipe.fileno()) if pipe is not None else None
    except (AttributeError, ValueError, OSError):
        return None


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


SEQ_ROOM = 32
"""Bytes kept free under the line limit for the `,"seq":n` every message gets."""


class Outbox:
    """The one path to stdout: every message is written whole, in order, with back-pressure.

    Each message gets a sequence number (appended as its last field, `"seq":n`) and stays in a
    replay buffer until the orchestrator acknowledges it. Nobody may be reading the container's
    stdout (the orchestrator restarting); a new orchestrator asks to `resume` after the last
    message it has, and gets the rest again. The buffer is bounded in bytes: past the bound the
    oldest messages go, and `resume` reports how many were lost.
    """

    def __init__(self, writer: Sink, max_line: int, replay_bytes: int | None = None) -> None:
        self._writer = writer
        self._max_line = max_line
        # At least one message of the largest size must fit, or a resume could return nothing.
        self._replay_bytes = max(replay_bytes or 0, max_line)
        self._seq = 0
        self._ring: deque[tuple[int, bytes]] = deque()
        self._ring_size = 0
        self._lost_through = 0  # the newest sequence number evicted before it was acknowledged
        self._lock = asyncio.Lock()

    @property
    def seq(self) -> int:
        return self._seq

    async def send(self, message: dict[str, Any]) -> None:
        line = encode(message)
        if len(line) + SEQ_ROOM > self._max_line:
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
        async with self._lock:
            # Wait for room before writing, not after: the transport's buffer then never holds
            # more than one line beyond its high-water mark, however many requests answer at
            # once while nobody reads stdout.
            await self._writer.drain()
            self._seq += 1
            line = b'%s,"seq":%d}\n' % (line[:-2], self._seq)
            self._remember(self._seq, line)
            self._writer.write(line)

    def _remember(self, seq: int, line: bytes) -> None:
        self._ring.append((seq, line))
        self._ring_size += len(line)
        while self._ring_size > self._replay_bytes and len(self._ring) > 1:
            evicted, old = self._ring.popleft()
            self._ring_size -= len(old)
            self._lost_through = evicted

    def ack(self, seq: int) -> None:
        """The orchestrator has everything up to `seq`: forget it."""
        while self._ring and self._ring[0][0] <= seq:
            _, line = self._ring.popleft()
            self._ring_size -= len(line)

    async def resume(self, request_id: Any, after: int, extra: dict[str, Any]) -> None:
        """Write a `resumeResponse` marker, then every kept message numbered above `after`.

        All of it is written in one go, so nothing else lands between the marker and the
        replay: the orchestrator can drop whatever it read before the marker.
        """
        async with self._lock:
            self._resume(request_id, after, extra)
            await self._writer.drain()

    def _resume(self, request_id: Any, after: int, extra: dict[str, Any]) -> None:
        self.ack(after)
        lost = max(0, self._lost_through - after)
        self._writer.write(
            encode(
                {
                    "id": request_id,
                    "type": "resumeResponse",
                    "after": after,
                    "seq": self._seq,
                    "lost": lost,
                    **extra,
                }
            )
        )
        for _, line in self._ring:
            self._writer.write(line)
