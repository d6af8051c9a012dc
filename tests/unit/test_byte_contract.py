"""The byte contract between agent and server (docs/protocol.md, "The agent's side"), tested
from both sides against the same fixtures: the agent's `Outbox` writes each message as one
line that starts with `{"id":` and ends with `,"seq":n}`; the server's reading of such a line
(`link.replies`) takes the sequence number off and swaps in a client's id without
re-encoding, and gets the same message as decoding it would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from insien.link.replies import ID_PREFIX, Reply, split_seq
from insien_agent.wire import Outbox

FIXTURES: list[dict[str, Any]] = [
    {"id": 7, "type": "execResponse", "stdout": "hi\n", "exitCode": 0},
    {"id": 'session:"c1"', "type": "output", "data": "é ☃ \u2028", "stream": "stdout"},
    {"id": "x", "type": "readResponse", "content": '{"id":1,"seq":2}', "path": 'seq,"seq":9'},
    {"id": 12, "type": "error", "code": "NOT_FOUND", "message": 'no such file: ",\\"seq\\":1}'},
    {"id": None, "type": "error", "code": "BAD_REQUEST", "message": "request is not valid JSON"},
    {"id": 3, "type": "pong", "time": 1.5, "nested": {"id": 99, "seq": 4}},
]


class Capture:
    """An Outbox sink that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def agent_lines(messages: list[dict[str, Any]]) -> list[bytes]:
    sink = Capture()
    outbox = Outbox(sink, max_line=1 << 20)

    async def write_all() -> None:
        for message in messages:
            await outbox.send(message)

    asyncio.run(write_all())
    return bytes(sink.data).split(b"\n")[:-1]


def test_the_agent_writes_id_first_and_seq_last() -> None:
    for n, (line, message) in enumerate(zip(agent_lines(FIXTURES), FIXTURES, strict=True), 1):
        assert line.startswith(ID_PREFIX), line
        assert line.endswith(b',"seq":%d}' % n), line
        assert json.loads(line) == {**message, "seq": n}


@pytest.mark.parametrize("client_id", [1, "r1", "ünï", {"not": "usual"}, None])
def test_the_server_reads_what_the_agent_wrote(client_id: Any) -> None:
    for n, (line, message) in enumerate(zip(agent_lines(FIXTURES), FIXTURES, strict=True), 1):
        parsed = json.loads(line)
        stripped, seq = split_seq(line, parsed)
        assert seq == n
        assert parsed == message  # `seq` taken off the parsed message too
        assert json.loads(stripped) == message
        # the id swap, done on the bytes, means the same as re-encoding would
        relayed = json.loads(Reply(parsed, stripped).for_client(client_id))
        assert relayed == {**message, "id": client_id}
