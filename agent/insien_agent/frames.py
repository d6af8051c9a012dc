"""Binary frames beside the JSON lines on the agent's stdio (docs/protocol.md, "Binary frames").

A line starts with `{`; a frame starts with a zero byte, then a fixed header and its payload:

    0x00 | seq: uint64 | channel: uint32 | kind: uint8 | length: uint32 | payload

all big-endian, 18 bytes of header. Frames carry bulk bytes (command output, file content)
raw, where a line would carry them as base64 inside JSON. A request opens a channel by naming
it (`"channel": n`, chosen by the server); every frame on that channel belongs to it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

MARK = 0
NEWLINE = 0x0A
HEADER = struct.Struct(">BQIBI")
MAX_FRAME = 1024 * 1024
"""Largest payload of one frame; larger bodies go as several frames."""
RESYNC_BYTES = HEADER.size + MAX_FRAME + 1
"""Newlines a rejoining server sends first: enough to end any line or frame it interrupted."""
_NEWLINES = re.compile(rb"\n+")

DATA = 0
STDOUT = 1
STDERR = 2
KINDS = {"stdout": STDOUT, "stderr": STDERR}


def header(seq: int, channel: int, kind: int, length: int) -> bytes:
    return HEADER.pack(MARK, seq, channel, kind, length)


@dataclass(frozen=True)
class InFrame:
    """A frame the server sent (its sequence number is not used in this direction)."""

    channel: int
    kind: int
    data: bytes


@dataclass(frozen=True)
class OversizeFrame:
    """Stands in for a frame longer than MAX_FRAME, whose payload was skipped."""

    size: int


class StreamSplitter:
    """Splits stdin into lines and frames, never holding more than one line or frame.

    Yields a line's bytes, None for a line over `max_line` (dropped up to its newline), an
    InFrame, or an OversizeFrame. The server never sends a frame over MAX_FRAME, so a header
    that says more means the stream is out of step (a server killed mid-frame, then a new one
    writing): everything up to the next newline is dropped. That is what makes the rejoining
    server's run of newlines (`RESYNC_BYTES` of them, see docs/protocol.md) bring the splitter
    back to the start of a line from any point of an interrupted line or frame. Blank lines
    are skipped without being yielded.
    """

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._line = bytearray()
        self._in_line = False
        self._discarding = False
        self._header = bytearray()
        self._in_header = False
        self._channel = 0
        self._kind = 0
        self._size = 0
        self._payload: list[bytes] = []
        self._left = 0
        self._out_of_step = False

    def feed(self, data: bytes) -> Iterator[bytes | InFrame | OversizeFrame | None]:
        at, end = 0, len(data)
        while at < end:
            if self._left:
                take = min(self._left, end - at)
                self._payload.append(data[at : at + take])
                at += take
                self._left -= take
                if not self._left:
                    yield self._finish_frame()
            elif self._in_header:
                take = min(HEADER.size - len(self._header), end - at)
                self._header += data[at : at + take]
                at += take
                if len(self._header) == HEADER.size:
                    frame = self._start_frame()
                    if frame is not None:
                        yield frame
            elif not self._in_line and data[at] == MARK:
                self._in_header = True
            elif not self._in_line and data[at] == NEWLINE:
                blank = _NEWLINES.match(data, at)
                at = blank.end() if blank else at + 1
            else:
                self._in_line = True
                newline = data.find(b"\n", at)
                if newline < 0:
                    self._add_to_line(data[at:])
                    return
                self._add_to_line(data[at:newline])
                at = newline + 1
                self._in_line = False
                if self._out_of_step:  # the rest of an oversize frame's line: already reported
                    self._out_of_step = self._discarding = False
                    continue
                if self._discarding:
                    self._discarding = False
                    yield None
                    continue
                line = bytes(self._line)
                self._line.clear()
                yield line

    def _add_to_line(self, piece: bytes) -> None:
        if self._discarding:
            return
        if len(self._line) + len(piece) > self._max_line:
            self._line.clear()
            self._discarding = True
            return
        self._line += piece

    def _start_frame(self) -> InFrame | OversizeFrame | None:
        _, _, self._channel, self._kind, self._size = HEADER.unpack(self._header)
        self._header.clear()
        self._in_header = False
        if self._size > MAX_FRAME:
            # Out of step: drop everything up to the next newline, as part of a line.
            self._in_line = self._discarding = self._out_of_step = True
            return OversizeFrame(self._size)
        self._left = self._size
        return self._finish_frame() if self._size == 0 else None

    def _finish_frame(self) -> InFrame:
        payload = b"".join(self._payload)
        self._payload.clear()
        return InFrame(self._channel, self._kind, payload)
