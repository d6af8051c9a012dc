"""The agent's `tunnel` and `tunnelSend` refuse what they cannot do, each with its code (the
bytes through a tunnel are tested end to end in tests/e2e/test_ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from insien.link.frames import FrameKind, encode_frame
from tests.agent_process import run_agent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_tunnel_refusals(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        assert {"tunnel", "tunnelSend"} <= set(agent.hello["types"])
        closed = free_port()
        await agent.send({"id": 1, "type": "tunnel", "port": closed, "channel": 7})
        refused = await agent.receive()
        assert (refused["type"], refused["code"]) == ("error", "CONNECTION_REFUSED")
        assert str(closed) in refused["message"]
        await agent.send({"id": 2, "type": "tunnel", "port": closed})
        assert (await agent.receive())["code"] == "BAD_REQUEST"  # no channel
        await agent.send({"id": 3, "type": "tunnel", "port": 70000, "channel": 8})
        assert (await agent.receive())["code"] == "BAD_REQUEST"
        await agent.send({"id": 4, "type": "tunnelSend", "tunnel": 1, "eof": True})
        assert (await agent.receive())["code"] == "NOT_FOUND"  # tunnel 1 never opened
        await agent.send({"id": 5, "type": "tunnelSend", "tunnel": 1, "channel": 9})
        assert (await agent.receive())["code"] == "BAD_REQUEST"  # no data frame came
        await agent.send({"id": 6, "type": "ping"})
        assert (await agent.receive())["type"] == "pong"  # and it serves on


async def test_a_tunnel_can_carry_its_first_bytes(tmp_path: Path) -> None:
    """`withData`: the frame before the request is written as soon as the tunnel connects
    (an HTTP request's head rides with the open: one round trip less per request)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with run_agent(tmp_path) as agent:
        assert "tunnelWithData" in agent.hello["features"]
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        await agent.send_raw(encode_frame(11, FrameKind.DATA, head))
        await agent.send({"id": 1, "type": "tunnel", "port": port, "channel": 11, "withData": True})
        with trio.fail_after(10):
            connection = await listeners[0].accept()
            got = b""
            while len(got) < len(head):
                got += await connection.receive_some(65536)
        assert got == head
        assert (await agent.receive())["type"] == "tunnelOpened"
        await connection.aclose()
        closed = await agent.receive()
        assert (closed["type"], closed["reason"]) == ("tunnelClosed", "closed")
    for listener in listeners:
        await listener.aclose()
