"""The link's side of the bulk socket (docs/protocol.md, "The bulk socket"), against a scripted
agent: it connects and has the agent attach the socket by its token, merges the two paths back
into the agent's one sequence, sends uploads' data frames on the socket in the order of their
lines, and when the socket is lost asks for what went with it again on stdio."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from insien.link import AgentLink
from insien.link.bulk import MAGIC, TOKEN_BYTES
from insien.link.frames import HEADER, FrameKind
from insien.runtime.docker.runtime import DockerChannel
from tests.unit.test_binary_frames import Scripted, agent_frame, sent_request


async def exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = await stream.receive_some(size - len(data))
        assert piece, "the link closed the bulk socket"
        data += piece
    return data


async def until(condition: Any) -> None:
    deadline = trio.current_time() + 5
    while not condition():
        assert trio.current_time() < deadline, "never happened"
        await trio.sleep(0.01)


@asynccontextmanager
async def attached(
    tmp_path: Path,
) -> AsyncIterator[tuple[Scripted, AgentLink, trio.Nursery, trio.SocketStream]]:
    """A link whose agent announced a bulk socket, and the agent's end of the connection the
    link made and had it attach."""
    path = str(tmp_path / "agent.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    stream = Scripted()
    link = AgentLink(DockerChannel(stream, path), name="t", max_line=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await stream.to_link.send(
            b'{"type":"ready","bulk":"/run/insien/bulk/agent.sock","seq":1}\n'
        )
        accepted, _ = await listener.accept()
        bulk = trio.SocketStream(accepted)
        preface = await exactly(bulk, len(MAGIC) + TOKEN_BYTES)
        assert preface.startswith(MAGIC)
        await until(lambda: b"bulkAttach" in stream.sent)
        request = sent_request(stream)
        assert request["type"] == "bulkAttach"
        assert request["token"] == preface[len(MAGIC) :].hex()
        await stream.to_link.send(
            b'{"id":%d,"type":"bulkAttachResponse","seq":2}\n' % request["id"]
        )
        await until(lambda: link.bulk_attached)
        yield stream, link, nursery, bulk
        stream.to_link.close()
    listener.close()


async def read_into(link: AgentLink, got: list[tuple[str, bytes | None]], done: trio.Event) -> None:
    async with link.request({"type": "read", "path": "f"}, binary=True) as pending:
        async for reply in pending:
            got.append((reply.message["type"], reply.data))
    done.set()


async def test_the_two_paths_are_merged_back_into_the_agents_order(tmp_path: Path) -> None:
    got: list[tuple[str, bytes | None]] = []
    done = trio.Event()
    async with attached(tmp_path) as (stream, link, nursery, bulk):
        nursery.start_soon(read_into, link, got, done)
        await until(lambda: b'"read"' in stream.sent)
        channel = sent_request(stream)["channel"]
        # stdio runs ahead: its frame and the final answer come before the socket's frames
        await stream.to_link.send(
            agent_frame(4, channel, FrameKind.DATA, b"cd")
            + b'{"id":%d,"type":"readResponse","bytes":6,"seq":6}\n' % (channel - 1)
        )
        await bulk.send_all(agent_frame(3, channel, FrameKind.DATA, b"ab"))
        await bulk.send_all(agent_frame(5, channel, FrameKind.DATA, b"ef"))
        with trio.fail_after(5):
            await done.wait()
    assert got == [("data", b"ab"), ("data", b"cd"), ("data", b"ef"), ("readResponse", None)]
    assert not link.protocol_error


async def test_an_upload_sends_its_frame_on_the_socket_before_its_line(tmp_path: Path) -> None:
    async with attached(tmp_path) as (stream, link, nursery, bulk):

        async def write() -> None:
            async with link.request({"type": "write", "path": "f"}, payload=b"\x00raw\n"):
                pass

        nursery.start_soon(write)
        head = await exactly(bulk, HEADER.size)
        mark, seq, channel, kind, length = HEADER.unpack(head)
        assert (mark, seq, kind, length) == (0, 0, FrameKind.DATA, 5)
        assert await exactly(bulk, length) == b"\x00raw\n"
        await until(lambda: b'"write"' in stream.sent)
        line = [json.loads(x) for x in bytes(stream.sent).splitlines() if b'"write"' in x]
        assert line[0]["channel"] == channel
        assert line[0]["bulk"] is True
        assert b"\x00raw" not in stream.sent  # the bytes went on the socket only


async def test_frames_lost_with_the_socket_are_asked_for_again(tmp_path: Path) -> None:
    got: list[tuple[str, bytes | None]] = []
    done = trio.Event()
    async with attached(tmp_path) as (stream, link, nursery, bulk):
        nursery.start_soon(read_into, link, got, done)
        await until(lambda: b'"read"' in stream.sent)
        channel = sent_request(stream)["channel"]
        await bulk.send_all(agent_frame(3, channel, FrameKind.DATA, b"ab"))
        await until(lambda: got)
        # seq 4 went into the socket as it broke; the final answer comes on stdio
        await bulk.aclose()
        await stream.to_link.send(
            b'{"id":%d,"type":"readResponse","bytes":4,"seq":5}\n' % (channel - 1)
        )
        await until(lambda: b"insien-replay" in stream.sent)
        resume = json.loads(bytes(stream.sent).split(b"\n")[-2])
        assert resume == {"id": "insien-replay", "type": "resume", "after": 3}
        assert not link.bulk_attached
        # the agent's marker, then everything after 3 again, on stdio
        await stream.to_link.send(
            b'{"id":"insien-replay","type":"resumeResponse","after":3,"seq":5,"lost":0}\n'
            + agent_frame(4, channel, FrameKind.DATA, b"cd")
            + b'{"id":%d,"type":"readResponse","bytes":4,"seq":5}\n' % (channel - 1)
        )
        with trio.fail_after(5):
            await done.wait()
    assert got == [("data", b"ab"), ("data", b"cd"), ("readResponse", None)]
    assert not link.protocol_error


async def test_a_socket_announced_but_unreachable_leaves_everything_on_stdio(
    tmp_path: Path,
) -> None:
    """As under gVisor, whose sockets live in its own kernel: the agent announces one, the
    server cannot connect, and uploads go on stdio as before."""
    stream = Scripted()
    link = AgentLink(DockerChannel(stream, str(tmp_path / "none.sock")), name="t", max_line=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await stream.to_link.send(
            b'{"type":"ready","bulk":"/run/insien/bulk/agent.sock","seq":1}\n'
        )
        await link.ready.wait()

        async def write() -> None:
            async with link.request({"type": "write", "path": "f"}, payload=b"on stdio"):
                pass

        nursery.start_soon(write)
        await until(lambda: b'"write"' in stream.sent)
        assert b"on stdio" in stream.sent  # the frame went just before its line, on stdio
        assert b"bulkAttach" not in stream.sent
        assert not link.bulk_attached
        stream.to_link.close()
