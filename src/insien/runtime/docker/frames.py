"""Decoding of Docker's multiplexed attach stream into pieces of stdout and stderr.

Without a TTY, Docker prefixes each chunk of output with an 8-byte header: the stream
(1 = stdout, 2 = stderr), three zero bytes, then the payload size as a big-endian uint32.
Frames split across reads at any byte, so the decoder buffers a partial header.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator

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
