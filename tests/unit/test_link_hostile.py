"""The link from the container's side (issue 18, V3): whatever bytes the attach stream carries,
`AgentLink.run` returns with the link closed, never raises, and names a protocol error when the
agent broke the protocol. Requests waiting on it get an answer."""

from __future__ import annotations

import json
import struct

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from insien.link import AgentLink
from insien.runtime.docker.runtime import DockerChannel

READY = b'{"type":"ready","protocol":1,"seq":1}\n'


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


class Feed(trio.abc.Stream):
    """An attach stream that yields the given chunks, then waits to be closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.sent = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        return None


async def run_link(chunks: list[bytes], max_line: int = 4096) -> AgentLink:
    link = AgentLink(DockerChannel(Feed(chunks)), name="hostile", max_line=max_line)
    with trio.fail_after(10):
        await link.run()
    assert link.closed.is_set()
    return link


async def test_a_nesting_bomb_is_a_protocol_error_not_a_crash() -> None:
    link = await run_link([frame(1, READY + b"[" * 200_000 + b"\n")], max_line=1 << 20)
    assert link.protocol_error
    assert "not JSON" in link.close_reason


async def test_each_kind_of_garbage_closes_the_link_as_a_protocol_error() -> None:
    for garbage in (
        b"\xff\xfe\n",
        b"[1,2]\n",
        b"null\n",
        b'"text"\n',
        b"x" * 5000 + b"\n",  # over the line limit
        b"{" * 3000 + b"\n",
    ):
        link = await run_link([frame(1, READY + garbage)])
        assert link.protocol_error, garbage
    framing = await run_link([frame(9, b"what")])
    assert framing.protocol_error


async def test_well_formed_oddities_are_dropped_and_the_link_lives() -> None:
    lines = [
        b'{"id":[1],"type":"x","seq":2}\n',
        b'{"id":12345,"type":"output","seq":3}\n',
        b'{"id":"a:b:c","type":"output","seq":4}\n',
        b'{"type":"ready","seq":"nine"}\n',
    ]
    link = await run_link([frame(1, READY + b"".join(lines)), frame(2, b"\xff\xfe log\n")])
    assert not link.protocol_error
    assert link.close_reason == "agent stream closed"


async def test_a_request_waiting_on_a_hostile_agent_gets_an_answer() -> None:
    answered: list[dict[str, object]] = []
    gate = trio.Event()
    BOMB = frame(1, b"[" * 10_000 + b"\n")

    class Late(Feed):
        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            if self._chunks and self._chunks[0] is BOMB:
                await gate.wait()
            return await super().receive_some(max_bytes)

    channel = DockerChannel(Late([frame(1, READY), BOMB]))
    link = AgentLink(channel, name="hostile", max_line=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await link.ready.wait()

        async def ask() -> None:
            answered.append(await link.call({"type": "ping"}))

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()  # the call is waiting for its answer
        gate.set()
    assert answered
    assert answered[0]["code"] == "AGENT_GONE"
    assert link.protocol_error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_never_escape_the_link(chunks: list[bytes]) -> None:
    trio.run(run_link, chunks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["id", "type", "seq", "x"]), inner, max_size=4)
            ),
            max_leaves=20,
        ),
        max_size=6,
    )
)
def test_random_json_lines_never_escape_the_link(values: list[object]) -> None:
    payload = READY + b"".join(json.dumps(v).encode() + b"\n" for v in values)
    trio.run(run_link, [frame(1, payload)])
