"""A process's output as a bounded log, and the subscribers that read it at their own pace.

Every chunk read from a process's pipes gets an absolute byte offset. The log keeps at most
`capacity` bytes; older chunks fall off the front. A subscriber has a cursor into the log: when
the log has moved past its cursor it reports the bytes it missed as `dropped`.

Primary subscribers (the request that started the process, while it follows it) hold the log
back instead: the pipe reader waits for them, so a slow client slows the process down rather
than losing its output. Secondary subscribers (`attach`) never slow a process down.
"""

from __future__ import annotations

import base64
import codecs
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import frames

CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class OutFrame:
    """Output for a request with a binary channel: sent as a frame, not an `output` event."""

    kind: int
    data: bytes


Event = dict[str, Any] | OutFrame


@dataclass(frozen=True)
class Chunk:
    start: int
    stream: str  # "stdout" or "stderr"
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class OutputLog:
    """The last `capacity` bytes a process wrote, as chunks with absolute offsets."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[Chunk] = deque()
        self.start = 0  # offset of the oldest byte still held
        self.end = 0  # offset just past the newest byte
        self._held = 0

    def append(self, stream: str, data: bytes) -> None:
        self._chunks.append(Chunk(self.end, stream, data))
        self.end += len(data)
        self._held += len(data)
        while self._held > self.capacity and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._held -= len(dropped.data)
            self.start = self._chunks[0].start
        if self._held > self.capacity:  # a single chunk larger than the whole log
            only = self._chunks.popleft()
            keep = only.data[-self.capacity :]
            self._chunks.append(Chunk(only.end - len(keep), only.stream, keep))
            self._held = len(keep)
            self.start = only.end - len(keep)

    def since(self, offset: int) -> Iterator[Chunk]:
        """Chunks (or their tails) after `offset`; the caller checks `start` for drops first."""
        for chunk in self._chunks:
            if chunk.end <= offset:
                continue
            if chunk.start < offset:
                yield Chunk(offset, chunk.stream, chunk.data[offset - chunk.start :])
            else:
                yield chunk


class Collected:
    """Output kept for an `execResponse`: at most `limit` bytes per stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False

    def add(self, stream: str, data: bytes) -> None:
        kept = self.parts[stream]
        room = self.limit - len(kept)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        kept += data


class Encoder:
    """Turns output bytes into the `data` string of an event, never splitting a character."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }

    def encode(self, stream: str, data: bytes, *, final: bool = False) -> str:
        if self.encoding == "base64":
            return base64.b64encode(data).decode("ascii")
        return str(self._decoders[stream].decode(data, final))

    def flush(self, stream: str) -> str:
        return "" if self.encoding == "base64" else self.encode(stream, b"", final=True)


def render(data: bytes, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", errors="replace")


@dataclass
class Subscriber:
    """One reader of a process's log: a streaming request, a collector, or both."""

    request_id: Any
    cursor: int
    primary: bool
    stream: bool
    encoder: Encoder
    credit: int
    collected: Collected | None = None
    dropped: int = 0
    closed: bool = False
    binary: bool = False
    """Output goes as frames on the request's channel (raw bytes, no encoding)."""

    def grant(self, n: int) -> None:
        self.credit += n

    def ready(self, log: OutputLog) -> bool:
        """Whether there is something this subscriber may take from the log now."""
        if self.cursor >= log.end:
            return False
        return not self.stream or self.credit > 0

    def take(self, log: OutputLog, pid: int, emit: Callable[[Event], None]) -> None:
        """Move the cursor forward as far as credit allows, emitting `output` events."""
        if self.cursor < log.start:
            self.dropped += log.start - self.cursor
            self.cursor = log.start
        for chunk in log.since(self.cursor):
            if self.stream and self.credit <= 0:
                return
            if self.collected is not None:
                self.collected.add(chunk.stream, chunk.data)
            if self.stream and self.binary:
                if self.dropped:
                    emit(self._dropped_event(pid, chunk.stream))
                emit(OutFrame(frames.KINDS[chunk.stream], chunk.data))
                self.credit -= 1
            elif self.stream:
                text = self.encoder.encode(chunk.stream, chunk.data)
                if text or self.dropped:
                    event: dict[str, Any] = {
                        "id": self.request_id,
                        "type": "output",
                        "pid": pid,
                        "stream": chunk.stream,
                        "data": text,
                    }
                    if self.dropped:
                        event["dropped"] = self.dropped
                        self.dropped = 0
                    emit(event)
                    self.credit -= 1
            self.cursor = chunk.end

    def _dropped_event(self, pid: int, stream: str) -> dict[str, Any]:
        """Before a frame: how many bytes this subscriber missed (frames carry no count)."""
        event = {
            "id": self.request_id,
            "type": "output",
            "pid": pid,
            "stream": stream,
            "data": "",
            "dropped": self.dropped,
        }
        self.dropped = 0
        return event

    def flush(self, pid: int, emit: Callable[[Event], None]) -> None:
        """At exit, the rest of any character the decoders were holding."""
        if not self.stream or self.binary:
            return
        for name in ("stdout", "stderr"):
            rest = self.encoder.flush(name)
            if rest:
                emit(
                    {
                        "id": self.request_id,
                        "type": "output",
                        "pid": pid,
                        "stream": name,
                        "data": rest,
                    }
                )
