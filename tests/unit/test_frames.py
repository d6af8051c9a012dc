"""Docker's multiplexed frames and line reassembly, split at every possible byte."""

from __future__ import annotations

import struct

import pytest

from insien.link.lines import LineAssembler, OversizeLine
from insien.runtime.docker.frames import FrameDecoder, FramingError, StreamKind


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


def decode_all(chunks: list[bytes]) -> list[tuple[StreamKind, bytes]]:
    decoder = FrameDecoder()
    merged: list[tuple[StreamKind, bytes]] = []
    for chunk in chunks:
        for kind, payload in decoder.feed(chunk):
            if merged and merged[-1][0] is kind:
                merged[-1] = (kind, merged[-1][1] + payload)
            else:
                merged.append((kind, payload))
    return merged


STREAM = frame(1, b'{"a":1}\n{"b"') + frame(2, b"log line\n") + frame(1, b":2}\n") + frame(1, b"")


def test_whole_stream_in_one_read() -> None:
    assert decode_all([STREAM]) == [
        (StreamKind.STDOUT, b'{"a":1}\n{"b"'),
        (StreamKind.STDERR, b"log line\n"),
        (StreamKind.STDOUT, b":2}\n"),
    ]


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_frames_split_across_reads_at_every_byte(cut: int) -> None:
    assert decode_all([STREAM[:cut], STREAM[cut:]]) == decode_all([STREAM])


def test_one_byte_at_a_time() -> None:
    assert decode_all([bytes([b]) for b in STREAM]) == decode_all([STREAM])


def test_unknown_stream_type_is_a_framing_error() -> None:
    with pytest.raises(FramingError):
        list(FrameDecoder().feed(frame(7, b"x")))


def test_lines_split_across_chunks() -> None:
    lines = LineAssembler(100)
    assert list(lines.feed(b'{"id":1,')) == []
    assert list(lines.feed(b'"x":2}\n{"id"')) == [b'{"id":1,"x":2}']
    assert list(lines.feed(b":2}\n")) == [b'{"id":2}']
    assert lines.pending == 0


def test_oversize_line_is_reported_once_and_dropped() -> None:
    lines = LineAssembler(10)
    out = list(lines.feed(b"short\n" + b"x" * 25))
    assert out == [b"short"]
    assert lines.pending == 0  # the long line is not held in memory
    out = list(lines.feed(b"y" * 1000 + b"\nnext\n"))
    assert out == [OversizeLine(1025), b"next"]


def test_oversize_line_within_one_chunk() -> None:
    lines = LineAssembler(4)
    assert list(lines.feed(b"123456789\nok\n")) == [OversizeLine(9), b"ok"]


def test_line_exactly_at_the_limit_passes() -> None:
    lines = LineAssembler(4)
    assert list(lines.feed(b"12")) == []
    assert list(lines.feed(b"34\n")) == [b"1234"]
