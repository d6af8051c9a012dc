"""The agent's replay buffer: sequence numbers, acknowledgements, resume after a gap, notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.agent_process import AgentProcess, run_agent


async def ping_many(agent: AgentProcess, count: int) -> list[int]:
    for n in range(count):
        await agent.send({"id": n, "type": "ping"})
    return [(await agent.receive())["id"] for _ in range(count)]


async def test_resume_replays_everything_not_acknowledged(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        assert await ping_many(agent, 5) == [0, 1, 2, 3, 4]  # seq 2..6 (the hello was 1)
        await agent.send({"id": "r1", "type": "resume", "after": 3})
        marker = await agent.receive_line()
        assert marker["type"] == "resumeResponse"
        assert (marker["after"], marker["seq"], marker["lost"]) == (3, 6, 0)
        replayed = [await agent.receive_line() for _ in range(3)]
        assert [m["seq"] for m in replayed] == [4, 5, 6]
        assert [m["id"] for m in replayed] == [2, 3, 4]
        # `after` acknowledged 1..3; an explicit ack drops more
        await agent.send({"id": "a", "type": "ack", "seq": 5})
        await agent.send({"id": "r2", "type": "resume", "after": 0})
        marker = await agent.receive_line()
        assert marker["lost"] == 0  # acknowledged is not lost
        assert (await agent.receive_line())["seq"] == 6
        # and live traffic continues with the next number
        await agent.send({"id": "p", "type": "ping"})
        assert (await agent.receive_line())["seq"] == 7


async def test_a_full_buffer_drops_the_oldest_and_says_how_many(tmp_path: Path) -> None:
    env = {"INSIEN_AGENT_MAX_LINE": "4096", "INSIEN_AGENT_REPLAY_BYTES": "1"}
    async with run_agent(tmp_path, **env) as agent:
        await ping_many(agent, 200)  # about 60 bytes each: far more than 4096 bytes
        await agent.send({"id": "r", "type": "resume", "after": 0})
        marker = await agent.receive_line()
        kept: list[dict[str, Any]] = []
        while len(kept) < marker["seq"] - marker["lost"]:
            kept.append(await agent.receive_line())
        assert marker["lost"] > 100
        assert sum(len(json.dumps(m, separators=(",", ":"))) + 1 for m in kept) <= 4096
        assert [m["seq"] for m in kept] == list(range(marker["lost"] + 1, marker["seq"] + 1))


async def test_notes_in_flight_requests_and_last_id_come_back_on_resume(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": 7, "type": "note", "notes": {"expiresAt": "2030-01-01"}})
        await agent.send({"id": 41, "type": "exec", "cmd": "sleep", "args": ["5"]})
        await agent.send({"id": "r", "type": "resume", "after": agent.last_seq})
        marker = await agent.receive_line()
        assert marker["notes"] == {"expiresAt": "2030-01-01"}
        assert marker["inFlight"] == [41]
        assert marker["lastId"] == 41
        assert marker["hello"]["type"] == "ready"
        await agent.send({"id": 8, "type": "note", "notes": "not an object"})
        assert (await agent.receive())["code"] == "BAD_REQUEST"
