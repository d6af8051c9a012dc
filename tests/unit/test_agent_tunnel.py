"""The agent's `tunnel` and `tunnelSend` refuse what they cannot do, each with its code (the
bytes through a tunnel are tested end to end in tests/e2e/test_ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

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
