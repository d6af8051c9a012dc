"""Framing of the agent's stdio: bounded line reading in, serialised JSON lines out."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections import deque
from typing import Any, NamedTuple, Protocol

from . import frames

Bytes = bytes | bytearray | memoryview

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

    def write(self, data: Bytes) -> None: ...

    async def drain(self) -> None: ...


class Bulk(Protocol):
    """The bulk socket (bulk.BulkSocket) as the Outbox sees it: an attached connection's
    writer, or None, and a way to let a broken one go."""

    writer: asyncio.StreamWriter | None

    def detach(self, why: str) -> None: ...


class FileSink:
    """Stdout redirected to a regular file: writes never block, so plain writes suffice."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: Bytes) -> None:
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


class Sent(NamedTuple):
    """One numbered unit written to stdout and kept for replay: a line, or a frame (its header
    and payload apart, so a payload is never copied to be kept)."""

    seq: int
    head: bytes
    payload: Bytes = b""
    channel: int | None = None
    owner: Any = None
    """For a frame: the request its channel belongs to, for a resume to report."""

    @property
    def size(self) -> int:
        return len(self.head) + len(self.payload)


class Outbox:
    """The one path to stdout: every message is written whole, in order, with back-pressure.

    Each line and frame gets a sequence number (a line carries it as its last field,
    `"seq":n`; a frame in its header) and stays in a replay buffer until the orchestrator
    acknowledges it. Nobody may be reading the container's stdout (the orchestrator
    restarting); a new orchestrator asks to `resume` after the last unit it has, and gets the
    rest again. The buffer is bounded in bytes: past the bound the oldest units go, and
    `resume` reports how many were lost.
    """

    def __init__(self, writer: Sink, max_line: int, replay_bytes: int | None = None) -> None:
        self._writer = writer
        self._max_line = max_line
        # At least one message of the largest size must fit, or a resume could return nothing.
        self._replay_bytes = max(replay_bytes or 0, max_line)
        self._seq = 0
        self._ring: deque[Sent] = deque()
        self._ring_size = 0
        self._lost_through = 0  # the newest sequence number evicted before it was acknowledged
        self._lock = asyncio.Lock()
        self.bulk: Bulk | None = None
        """The bulk socket: while it has a connection, frames go there instead of stdout (the
        same sequence numbers and replay buffer; lines and replays stay on stdout)."""

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
            self._remember(Sent(self._seq, line))
            self._writer.write(line)

    async def send_frame(self, owner: Any, channel: int, kind: int, data: bytes) -> None:
        """Bytes for the request `owner` on its channel, as one or more frames: on the bulk
        socket when one is attached, else on stdout. A larger body is cut into views of
        itself, never copied (bytes do not change; anything else is copied once)."""
        whole = memoryview(data if isinstance(data, bytes) else bytes(data))
        for start in range(0, max(len(whole), 1), frames.MAX_FRAME):
            payload = whole[start : start + frames.MAX_FRAME]
            async with self._lock:
                sink = await self._frame_sink()
                self._seq += 1
                head = frames.header(self._seq, channel, kind, len(payload))
                self._remember(Sent(self._seq, head, payload, channel, owner))
                sink.write(head)
                sink.write(payload)

    async def _frame_sink(self) -> Sink:
        """Where the next frame goes, once there is room in it. A bulk connection that broke is
        let go and the frame goes on stdout (one already written to it and lost there is in
        the replay buffer: the server asks for it again)."""
        writer = self.bulk.writer if self.bulk is not None else None
        if writer is not None and self.bulk is not None:
            try:
                await writer.drain()
                if not writer.is_closing():
                    return writer
            except OSError as exc:  # ConnectionResetError, or what its reader saw
                self.bulk.detach(f"writing to it failed: {exc}")
            else:
                self.bulk.detach("it was closed")
        await self._writer.drain()
        return self._writer

    def _remember(self, sent: Sent) -> None:
        self._ring.append(sent)
        self._ring_size += sent.size
        while self._ring_size > self._replay_bytes and len(self._ring) > 1:
            old = self._ring.popleft()
            self._ring_size -= old.size
            self._lost_through = old.seq

    def ack(self, seq: int) -> None:
        """The orchestrator has everything up to `seq`: forget it."""
        while self._ring and self._ring[0].seq <= seq:
            self._ring_size -= self._ring.popleft().size

    def channels(self) -> dict[int, Any]:
        """The owners of the channels that frames kept for replay belong to."""
        return {sent.channel: sent.owner for sent in self._ring if sent.channel is not None}

    async def resume(self, request_id: Any, after: int, extra: dict[str, Any]) -> None:
        """Write a `resumeResponse` marker, then every kept unit numbered above `after`.

        All of it is written in one go, so nothing else lands between the marker and the
        replay: the orchestrator can drop whatever it read before the marker. `channels` in
        the marker names the request of every channel the replay and the requests still
        running use, so the new orchestrator can route their frames.
        """
        async with self._lock:
            self._resume(request_id, after, extra)
            await self._writer.drain()

    def _resume(self, request_id: Any, after: int, extra: dict[str, Any]) -> None:
        self.ack(after)
        lost = max(0, self._lost_through - after)
        owners = {**self.channels(), **extra.pop("channels", {})}
        self._writer.write(
            encode(
                {
                    "id": request_id,
                    "type": "resumeResponse",
                    "after": after,
                    "seq": self._seq,
                    "lost": lost,
                    # What the replay starts with: a server that never saw what was
                    # acknowledged before it (a restarted one) learns where the sequence goes on.
                    "first": self._ring[0].seq if self._ring else self._seq + 1,
                    "channels": [[channel, owner] for channel, owner in owners.items()],
                    **extra,
                }
            )
        )
        for sent in self._ring:
            self._writer.write(sent.head)
            if sent.payload:
                self._writer.write(sent.payload)
