"""The agent's stdout as units: JSON lines and binary frames (docs/protocol.md, "Binary frames").

A line starts with `{` and ends with a newline; a frame starts with a zero byte:

    0x00 | seq: uint64 | channel: uint32 | kind: uint8 | length: uint32 | payload

Frames carry bulk bytes raw (command output, file content) on a channel a request opened.
Everything here is hostile input: a frame longer than MAX_FRAME or of an unknown kind is a
protocol error, and no unit is held beyond its bound (a line `max_line`, a frame MAX_FRAME).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .lines import LineAssembler, OversizeLine

MARK = 0
HEADER = struct.Struct(">BQIBI")
MAX_FRAME = 1024 * 1024
RESYNC = b"\n" * (HEADER.size + MAX_FRAME + 1)
"""What a server rejoining a running agent sends first. Its predecessor may have died mid-line
or mid-frame; this many newlines end any such line, finish any such frame (never claimed: no
request follows it), or, mid-header, make a length the agent knows is out of step and drops
to the next newline. After it, the agent reads from the start of a line."""


class FrameKind(enum.IntEnum):
    DATA = 0
    STDOUT = 1
    STDERR = 2


STREAM_NAMES = {FrameKind.STDOUT: "stdout", FrameKind.STDERR: "stderr"}


@dataclass(frozen=True)
class Frame:
    seq: int
    channel: int
    kind: FrameKind
    data: bytes


class FramingError(Exception):
    """The agent wrote a frame no well-behaved agent writes."""


def encode_frame(channel: int, kind: FrameKind, data: bytes) -> bytes:
    """A frame for the agent's stdin (the server numbers nothing it sends: seq is 0)."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"a frame holds at most {MAX_FRAME} bytes, not {len(data)}")
    return HEADER.pack(MARK, 0, channel, kind, len(data)) + data


class UnitAssembler:
    """Reassembles lines and frames from pieces of the agent's stdout.

    Lines over `max_line` are dropped up to their newline and reported as OversizeLine;
    frames are whole when yielded. Pieces split anywhere, headers included.
    """

    def __init__(self, max_line: int) -> None:
        self._lines = LineAssembler(max_line)
        self._in_line = False
        self._header = bytearray()
        self._in_header = False
        self._frame: tuple[int, int, FrameKind] | None = None
        self._payload: list[bytes] = []
        self._left = 0

    def feed(self, data: bytes) -> Iterator[bytes | OversizeLine | Frame]:
        at, end = 0, len(data)
        while at < end:
            if self._frame is not None:
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
                if len(self._header) == HEADER.size and self._start_frame():
                    yield self._finish_frame()
            elif not self._in_line and data[at] == MARK:
                self._in_header = True
            else:
                self._in_line = True
                newline = data.find(b"\n", at)
                if newline < 0:
                    self._lines.add(data[at:])
                    return
                self._lines.add(data[at:newline])
                at = newline + 1
                self._in_line = False
                yield self._lines.end_line()

    def _start_frame(self) -> bool:
        """Read a complete header; True if the frame is empty and so already complete."""
        _, seq, channel, kind, length = HEADER.unpack(self._header)
        self._header.clear()
        self._in_header = False
        if length > MAX_FRAME:
            raise FramingError(f"a frame of {length} bytes, over the {MAX_FRAME} byte limit")
        try:
            self._frame = (seq, channel, FrameKind(kind))
        except ValueError:
            raise FramingError(f"a frame of unknown kind {kind}") from None
        self._left = length
        return bool(length == 0)

    def _finish_frame(self) -> Frame:
        assert self._frame is not None
        seq, channel, kind = self._frame
        self._frame = None
        payload = self._payload[0] if len(self._payload) == 1 else b"".join(self._payload)
        self._payload.clear()
        return Frame(seq, channel, kind, payload)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line or frame currently held."""
        return self._lines.pending + sum(len(p) for p in self._payload)
