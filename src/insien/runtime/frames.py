"""Decoding of Docker's multiplexed attach stream into lines of stdout and stderr.

Without a TTY, Docker prefixes each chunk of output with an 8-byte header: the stream
(1 = stdout, 2 = stderr), three zero bytes, then the payload size as a big-endian uint32.
Frames split across reads at any byte, and lines split across frames, so both layers buffer.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct(">BxxxI")


class StreamKind(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2


class FramingError(Exception):
    """The attach stream is not speaking Docker's multiplexed format."""


class FrameDecoder:
    """Turns arbitrary chunks of the attach stream into (stream, payload) pieces.

    Payloads are yielded as they arrive rather than whole, so one huge frame never has to be
    held in memory at once.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._kind = StreamKind.STDOUT
        self._remaining = 0

    def feed(self, data: bytes) -> Iterator[tuple[StreamKind, bytes]]:
        view = memoryview(data)
        while view:
            if self._remaining == 0:
                need = HEADER.size - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < HEADER.size:
                    return
                kind, size = HEADER.unpack(self._header)
                self._header.clear()
                try:
                    self._kind = StreamKind(kind)
                except ValueError:
                    raise FramingError(f"unknown stream type {kind} in attach frame") from None
                self._remaining = size
                continue
            piece = view[: self._remaining]
            view = view[len(piece) :]
            self._remaining -= len(piece)
            yield self._kind, bytes(piece)


@dataclass
class OversizeLine:
    """Stands in for a line that was longer than allowed and was therefore dropped."""

    size: int


class LineAssembler:
    """Reassembles newline-terminated lines, holding at most `max_line` bytes of a partial one.

    An over-long line is discarded up to its newline and reported once, as an OversizeLine.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._dropped: int | None = None  # bytes skipped of the current over-long line

    def feed(self, data: bytes) -> Iterator[bytes | OversizeLine]:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            start = end + 1
            if self._dropped is not None:
                yield OversizeLine(self._dropped + len(piece))
                self._dropped = None
            elif len(self._partial) + len(piece) > self.max_line:
                yield OversizeLine(len(self._partial) + len(piece))
                self._partial.clear()
            else:
                self._partial += piece
                yield bytes(self._partial)
                self._partial.clear()
        rest = data[start:]
        if self._dropped is not None:
            self._dropped += len(rest)
        elif len(self._partial) + len(rest) > self.max_line:
            self._dropped = len(self._partial) + len(rest)
            self._partial.clear()
        else:
            self._partial += rest

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line currently held."""
        return len(self._partial)
