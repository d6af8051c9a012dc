"""The agent's side of the bulk socket (agent/insien_agent/bulk.py): it listens only in a
directory nobody but root can enter, attaches only the connection whose token the server names
on stdio, pairs `write` lines with the socket's data frames by order, and falls back to stdout
when its connection goes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from insien_agent import bulk as agent_bulk
from insien_agent.bulk import MAGIC, SOCKET_NAME, TOKEN_BYTES, BulkSocket
from insien_agent.errors import AgentError
from insien_agent.frames import DATA, HEADER, InFrame
from insien_agent.identity import Identity
from insien_agent.wire import Outbox
from tests.unit.test_byte_contract import Capture

ROOT = Identity(uid=None, gid=None, name=None, home=None)


class Attached:
    """Stands in for an attached connection's writer (only `claim` looks at it here)."""


def with_connection(socket: BulkSocket) -> BulkSocket:
    socket.writer = Attached()  # type: ignore[assignment]
    return socket


def is_attached(socket: BulkSocket) -> bool:
    return socket.writer is not None


def frame(channel: int, data: bytes) -> InFrame:
    return InFrame(channel, DATA, data)


def test_a_claim_takes_its_frame_and_drops_unclaimed_ones_before_it() -> None:
    async def scenario() -> None:
        socket = with_connection(BulkSocket())
        socket._held.extend([frame(5, b"orphan"), frame(7, b"mine"), frame(9, b"next")])
        assert await socket.claim(7) == b"mine"
        assert [f.channel for f in socket._held] == [9]
        # A claim whose frame is not there while a later one is: its frame is not coming.
        with pytest.raises(AgentError, match="no data frame came for channel 8"):
            await socket.claim(8)
        assert await socket.claim(9) == b"next"

    asyncio.run(scenario())


def test_a_claim_waits_for_its_frame_and_a_cancelled_one_gives_its_turn_up() -> None:
    async def scenario() -> None:
        socket = with_connection(BulkSocket())
        cancelled = socket.claim(3)
        waiting = socket.claim(4)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert not waiting.done()
        socket._held.extend([frame(3, b"late"), frame(4, b"four")])
        socket._match()
        assert await waiting == b"four"
        assert not socket._held

    asyncio.run(scenario())


def test_without_a_connection_a_claim_fails_at_once() -> None:
    async def scenario() -> None:
        with pytest.raises(AgentError, match="no data frame came"):
            await BulkSocket().claim(1)

    asyncio.run(scenario())


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent listens as root")
def test_only_the_connection_with_the_servers_token_is_attached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_bulk, "ATTACH_TIMEOUT", 0.5)
    folder = tmp_path / "bulk"
    folder.mkdir(mode=0o755)

    async def scenario() -> None:
        socket = BulkSocket(str(folder))
        assert await socket.listen(ROOT)
        assert socket.path == str(folder / SOCKET_NAME)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(socket.path).st_mode) == 0o600
        token = os.urandom(TOKEN_BYTES)

        class Req:
            msg: dict[str, Any] = {"token": token.hex()}

        # A spoofer that reached the socket presents another token: it is never attached.
        _, spoof = await asyncio.open_unix_connection(socket.path)
        spoof.write(MAGIC + os.urandom(TOKEN_BYTES))
        with pytest.raises(AgentError, match="no connection presented that token"):
            await socket.handle_attach(Req())  # type: ignore[arg-type]
        assert not is_attached(socket)
        reader, writer = await asyncio.open_unix_connection(socket.path)
        writer.write(MAGIC + token)
        answer = await socket.handle_attach(Req())  # type: ignore[arg-type]
        assert answer == {"type": "bulkAttachResponse"}
        assert is_attached(socket)
        # Frames go on the socket while it is attached, numbered in the one sequence.
        stdout = Capture()
        outbox = Outbox(stdout, max_line=1 << 20)
        outbox.bulk = socket
        await outbox.send({"id": 1, "type": "x"})
        await outbox.send_frame(2, 9, DATA, b"payload")
        head = await reader.readexactly(HEADER.size)
        assert HEADER.unpack(head) == (0, 2, 9, DATA, 7)
        assert await reader.readexactly(7) == b"payload"
        assert b"payload" not in stdout.data
        # The server goes: the agent lets the connection go and writes on stdout again.
        writer.close()
        for _ in range(100):
            if not is_attached(socket):
                break
            await asyncio.sleep(0.01)
        assert not is_attached(socket)
        await outbox.send_frame(2, 9, DATA, b"again")
        assert stdout.data.endswith(b"again")
        spoof.close()
        socket.close()
        await asyncio.sleep(0.05)  # the transports' close callbacks

    asyncio.run(scenario())


def test_no_directory_means_no_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        socket = BulkSocket(str(tmp_path / "absent"))
        assert not await socket.listen(ROOT)
        assert socket.path is None

    asyncio.run(scenario())
