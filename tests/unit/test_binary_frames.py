"""Binary frames beside JSON lines on the agent's stdio (docs/protocol.md, "Binary frames"),
tested from both sides: what the agent's Outbox writes, the server's UnitAssembler reads back
whole however the stream is cut; what the server sends, the agent's StreamSplitter reads; the
replay buffer keeps frames and a resume names their channels; the link routes frames to the
request that opened the channel, and treats broken framing as the agent's protocol error."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from insien.link import AgentLink
from insien.link.frames import (
    HEADER,
    MAX_FRAME,
    RESYNC,
    Frame,
    FrameKind,
    FramingError,
    UnitAssembler,
    encode_frame,
)
from insien.link.lines import OversizeLine
from insien.runtime.docker.runtime import DockerChannel
from insien_agent import frames as agent_frames
from insien_agent.frames import InFrame, OversizeFrame, StreamSplitter
from insien_agent.wire import Outbox
from tests.unit.test_byte_contract import Capture


def agent_output(steps: list[tuple[str, Any]], replay_bytes: int | None = None) -> bytes:
    sink = Capture()
    outbox = Outbox(sink, max_line=1 << 20, replay_bytes=replay_bytes)

    async def write_all() -> None:
        for kind, value in steps:
            if kind == "line":
                await outbox.send(value)
            else:
                await outbox.send_frame(*value)

    asyncio.run(write_all())
    return bytes(sink.data)


STEPS: list[tuple[str, Any]] = [
    ("line", {"id": 1, "type": "spawnResponse", "pid": 7}),
    ("frame", (1, 5, agent_frames.STDOUT, b"hello\n{not a line\x00")),
    ("frame", (1, 5, agent_frames.STDERR, b"")),
    ("line", {"id": 2, "type": "pong"}),
    ("frame", (3, 9, agent_frames.DATA, bytes(range(256)) * 10)),
    ("line", {"id": 1, "type": "exit", "exitCode": 0}),
]
STREAM = agent_output(STEPS)


def read_units(chunks: list[bytes], max_line: int = 1 << 20) -> list[bytes | OversizeLine | Frame]:
    assembler = UnitAssembler(max_line)
    return [unit for chunk in chunks for unit in assembler.feed(chunk)]


def test_lines_and_frames_come_back_whole_and_numbered_in_one_sequence() -> None:
    units = read_units([STREAM])
    assert [type(u).__name__ for u in units] == [
        "bytes",
        "Frame",
        "Frame",
        "bytes",
        "Frame",
        "bytes",
    ]
    frames = [u for u in units if isinstance(u, Frame)]
    assert [(f.seq, f.channel, f.kind, f.data) for f in frames] == [
        (2, 5, FrameKind.STDOUT, b"hello\n{not a line\x00"),
        (3, 5, FrameKind.STDERR, b""),
        (5, 9, FrameKind.DATA, bytes(range(256)) * 10),
    ]
    lines = [json.loads(u) for u in units if isinstance(u, bytes)]
    assert [line["seq"] for line in lines] == [1, 4, 6]


@pytest.mark.parametrize("cut", range(1, len(STREAM), 7))
def test_a_frame_split_across_reads_anywhere(cut: int) -> None:
    assert read_units([STREAM[:cut], STREAM[cut:]]) == read_units([STREAM])


def test_one_byte_at_a_time() -> None:
    assert read_units([bytes([b]) for b in STREAM]) == read_units([STREAM])


def test_an_oversize_frame_or_unknown_kind_is_a_framing_error() -> None:
    too_long = HEADER.pack(0, 1, 1, FrameKind.DATA, MAX_FRAME + 1)
    with pytest.raises(FramingError):
        read_units([too_long])
    with pytest.raises(FramingError):
        read_units([HEADER.pack(0, 1, 1, 7, 0)])


def test_a_long_line_is_dropped_and_the_frames_after_it_survive() -> None:
    data = b'{"x":"' + b"a" * 100 + b'"}\n' + encode_frame(4, FrameKind.DATA, b"ok")
    units = read_units([data], max_line=50)
    assert isinstance(units[0], OversizeLine)
    assert units[1] == Frame(0, 4, FrameKind.DATA, b"ok")


def test_the_agent_splits_large_payloads_into_frames_of_at_most_max_frame() -> None:
    payload = b"z" * (2 * agent_frames.MAX_FRAME + 3)
    units = read_units([agent_output([("frame", (1, 2, agent_frames.DATA, payload))])])
    assert [len(u.data) for u in units if isinstance(u, Frame)] == [MAX_FRAME, MAX_FRAME, 3]


# -- the agent's side: what the server sends -------------------------------------------------

SERVER_STREAM = (
    b'{"id":1,"type":"ping"}\n'
    + encode_frame(2, FrameKind.DATA, b"\x00\n{payload}\n")
    + b'{"id":3,"type":"write","path":"f","channel":2}\n'
    + encode_frame(4, FrameKind.DATA, b"")
)


def split(chunks: list[bytes], max_line: int = 1 << 20) -> list[Any]:
    splitter = StreamSplitter(max_line)
    return [unit for chunk in chunks for unit in splitter.feed(chunk)]


def test_the_agent_reads_frames_and_lines_split_anywhere() -> None:
    whole = split([SERVER_STREAM])
    assert whole == [
        b'{"id":1,"type":"ping"}',
        InFrame(2, agent_frames.DATA, b"\x00\n{payload}\n"),
        b'{"id":3,"type":"write","path":"f","channel":2}',
        InFrame(4, agent_frames.DATA, b""),
    ]
    for cut in range(1, len(SERVER_STREAM)):
        assert split([SERVER_STREAM[:cut], SERVER_STREAM[cut:]]) == whole


def test_an_oversize_frame_means_out_of_step_and_the_agent_drops_to_the_next_newline() -> None:
    huge = HEADER.pack(0, 0, 1, 0, agent_frames.MAX_FRAME + 5) + b"q" * 5000
    units = split([huge[:1000], huge[1000:] + b'\n{"id":2}\n'])
    assert units == [OversizeFrame(agent_frames.MAX_FRAME + 5), b'{"id":2}']
    assert split([b"x" * 20 + b'\n{"id":1}\n'], max_line=10) == [None, b'{"id":1}']


def test_blank_lines_are_skipped_however_many() -> None:
    assert split([b"\n" * 100_000 + b'{"id":1}\n\n\n', b'\n{"id":2}\n']) == [
        b'{"id":1}',
        b'{"id":2}',
    ]


RESUME_LINE = b'{"id":"insien-resume","type":"resume","after":0}\n'


def after_resync(interrupted: bytes) -> list[Any]:
    """What the agent reads of a rejoining server's newlines and resume line, after a stream
    that ended at `interrupted` (an old server killed mid-write)."""
    splitter = StreamSplitter(1 << 20)
    list(splitter.feed(interrupted))
    return list(splitter.feed(RESYNC + RESUME_LINE))


def assert_back_in_step(units: list[Any], sent: bytes) -> None:
    assert units[-1] == RESUME_LINE.rstrip(b"\n")
    # Before it, only the remains of what was cut: a request that parses is one the old server
    # sent whole but for its newline, never one made of pieces.
    for unit in units[:-1]:
        if isinstance(unit, bytes):
            try:
                json.loads(unit)
            except ValueError:
                continue
            assert unit + b"\n" in sent


def test_the_rejoining_servers_newlines_end_whatever_the_old_server_cut_off() -> None:
    # A server SIGKILLed mid-write leaves the agent's stdin at any point of a line or frame;
    # the next server's first bytes must not be read as the rest of it.
    assert len(RESYNC) == agent_frames.RESYNC_BYTES
    for cut in range(len(SERVER_STREAM)):
        assert_back_in_step(after_resync(SERVER_STREAM[:cut]), SERVER_STREAM)
    for size in (MAX_FRAME, MAX_FRAME - 1, 0x0F_FFFF, 0x0A0A, 1):
        frame = encode_frame(7, FrameKind.DATA, b"\x00" * size)
        cuts = {*range(HEADER.size + 2), size // 2, len(frame) - 1}
        for cut in cuts:
            assert_back_in_step(after_resync(frame[:cut]), frame)


# -- replay: frames are kept and replayed like lines -----------------------------------------


def test_a_resume_replays_frames_after_the_mark_and_names_their_channels() -> None:
    sink = Capture()
    outbox = Outbox(sink, max_line=1 << 20)

    async def scenario() -> None:
        for kind, value in STEPS:
            if kind == "line":
                await outbox.send(value)
            else:
                await outbox.send_frame(*value)
        sink.data.clear()
        await outbox.resume("r", 2, {"channels": {11: "session:1"}})

    asyncio.run(scenario())
    marker, *replayed = read_units([bytes(sink.data)])
    assert isinstance(marker, bytes)
    resumed = json.loads(marker)
    assert resumed["type"] == "resumeResponse"
    assert sorted(map(tuple, resumed["channels"])) == [(5, 1), (9, 3), (11, "session:1")]
    seqs = [u.seq if isinstance(u, Frame) else json.loads(u)["seq"] for u in replayed]  # type: ignore[arg-type]
    assert seqs == [3, 4, 5, 6]


def test_frames_count_against_the_replay_bound() -> None:
    sink = Capture()
    outbox = Outbox(sink, max_line=1000, replay_bytes=1000)

    async def scenario() -> dict[str, Any]:
        for _ in range(10):
            await outbox.send_frame(1, 2, agent_frames.STDOUT, b"x" * 400)
        sink.data.clear()
        await outbox.resume("r", 0, {})
        marker = bytes(sink.data).split(b"\n", 1)[0]
        result: dict[str, Any] = json.loads(marker)
        return result

    resumed = asyncio.run(scenario())
    assert resumed["lost"] == 8  # two frames of 418 bytes fit in 1000


# -- the link: routing frames to the request whose channel they are on -------------------------


def docker_frame(payload: bytes) -> bytes:
    return struct.pack(">BxxxI", 1, len(payload)) + payload


class Scripted(trio.abc.Stream):
    """An attach stream the test writes the agent's side of, as it goes."""

    def __init__(self) -> None:
        self.to_link, self._from_test = trio.open_memory_channel[bytes](100)
        self.sent = bytearray()
        self.got_request = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        self.got_request.set()

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return docker_frame(await self._from_test.receive())
        except trio.EndOfChannel:
            return b""

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def ready_link() -> AsyncIterator[tuple[Scripted, AgentLink, trio.Nursery]]:
    """A link running on a Scripted stream whose agent has said hello."""
    stream = Scripted()
    link = AgentLink(DockerChannel(stream), name="t", max_line=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await stream.to_link.send(b'{"type":"ready","seq":1}\n')
        await link.ready.wait()
        yield stream, link, nursery


def sent_request(stream: Scripted) -> dict[str, Any]:
    line = bytes(stream.sent).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    request: dict[str, Any] = json.loads(line)
    stream.sent.clear()
    stream.got_request = trio.Event()
    return request


def agent_frame(seq: int, channel: int, kind: int, data: bytes) -> bytes:
    return HEADER.pack(0, seq, channel, kind, len(data)) + data


async def test_frames_reach_the_request_that_opened_the_channel() -> None:
    got: list[tuple[str, bytes | None]] = []
    done = trio.Event()
    async with ready_link() as (stream, link, nursery):

        async def ask() -> None:
            async with link.request({"type": "read", "path": "f"}, binary=True) as pending:
                async for reply in pending:
                    got.append((reply.message["type"], reply.data))
            done.set()

        nursery.start_soon(ask)
        await stream.got_request.wait()
        request = sent_request(stream)
        channel = request["channel"]
        assert channel != request["id"]
        await stream.to_link.send(
            agent_frame(2, channel, FrameKind.DATA, b"ab")
            + agent_frame(3, channel + 1000, FrameKind.DATA, b"nobody's")  # ignored
            + agent_frame(4, channel, FrameKind.DATA, b"cd")[:10]
        )
        await stream.to_link.send(
            agent_frame(4, channel, FrameKind.DATA, b"cd")[10:]
            + b'{"id":%d,"type":"readResponse","bytes":4,"seq":5}\n' % request["id"]
        )
        with trio.fail_after(5):
            await done.wait()
        stream.to_link.close()
    assert got == [("data", b"ab"), ("data", b"cd"), ("readResponse", None)]
    assert not link.protocol_error


async def test_a_payload_goes_as_a_data_frame_just_before_its_request() -> None:
    async with ready_link() as (stream, link, nursery):

        async def write() -> None:
            message = {"type": "write", "path": "f", "channel": 999}  # a client's channel: dropped
            async with link.request(message, payload=b"\x00raw\n") as pending:
                async for _ in pending:
                    pass

        nursery.start_soon(write)
        await stream.got_request.wait()
        units = split([bytes(stream.sent)])
        assert isinstance(units[0], InFrame)
        assert units[0].data == b"\x00raw\n"
        request = json.loads(units[1])
        assert request["channel"] == units[0].channel != 999
        await stream.to_link.send(b'{"id":%d,"type":"writeResponse","seq":2}\n' % request["id"])
        stream.to_link.close()


async def test_a_stream_that_ends_mid_frame_fails_the_waiting_request() -> None:
    answers: list[dict[str, Any]] = []
    async with ready_link() as (stream, link, nursery):

        async def ask() -> None:
            async with link.request({"type": "read", "path": "f"}, binary=True) as pending:
                async for reply in pending:
                    answers.append(reply.message)

        nursery.start_soon(ask)
        await stream.got_request.wait()
        channel = sent_request(stream)["channel"]
        await stream.to_link.send(agent_frame(2, channel, FrameKind.DATA, b"0123456789")[:-4])
        stream.to_link.close()
    assert answers[-1]["code"] == "AGENT_GONE"


async def test_a_frame_without_a_sequence_number_is_a_protocol_error() -> None:
    async with ready_link() as (stream, link, _):
        await stream.to_link.send(b"\x00" * 64 + b"\n")
        with trio.fail_after(5):
            await link.closed.wait()
    assert link.protocol_error
    assert "sequence" in link.close_reason


async def test_a_channel_closed_mid_transfer_drops_its_late_frames_and_leaks_nothing() -> None:
    async with ready_link() as (stream, link, nursery):
        got_first = trio.Event()
        leave = trio.Event()

        async def ask() -> None:
            async with link.request({"type": "read", "path": "f"}, binary=True) as pending:
                async for _ in pending:
                    got_first.set()
                    await leave.wait()
                    return  # the client went away mid-transfer

        nursery.start_soon(ask)
        await stream.got_request.wait()
        request = sent_request(stream)
        channel = request["channel"]
        assert link.open_channels == 1
        await stream.to_link.send(agent_frame(2, channel, FrameKind.DATA, b"first"))
        await got_first.wait()
        leave.set()
        await stream.got_request.wait()  # the cancel the link sends for it
        assert json.loads(bytes(stream.sent).splitlines()[-1])["type"] == "cancel"
        assert link.open_channels == 0
        # The agent's frames in flight still arrive, then its answer: dropped, link alive.
        await stream.to_link.send(
            agent_frame(3, channel, FrameKind.DATA, b"late" * 1000)
            + b'{"id":%d,"type":"error","code":"CANCELLED","message":"x","seq":4}\n' % request["id"]
        )
        await trio.testing.wait_all_tasks_blocked()  # all of it read, the link waiting on
        assert not link.closed.is_set()
        stream.to_link.close()
    assert not link.protocol_error
