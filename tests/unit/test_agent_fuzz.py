"""Hostile requests of every type straight to the agent (run as a local process, as the
orchestrator speaks to it): every request gets exactly one structured final answer, and the
agent serves on. Paths stay inside a scratch folder, since here the agent runs on this machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings

from tests.agent_process import AgentProcess, run_agent
from tests.fuzzing import STARTED_TYPES, check_answer, is_final, requests


async def final_answer(agent: AgentProcess, request_id: str) -> dict[str, Any]:
    while True:
        message = await agent.receive(timeout=20)
        if message.get("id") != request_id:
            continue  # an answer to a cancel, or a late event
        if is_final(message):
            return message
        if message.get("type") in STARTED_TYPES:
            await agent.send({"id": "cancel", "type": "cancel", "target": request_id})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(local_paths=True))
def test_the_agent_answers_every_hostile_request(request: dict[str, Any]) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as workdir:
            async with run_agent(Path(workdir)) as agent:
                await agent.send({**request, "id": "fuzz"})
                check_answer(request.get("type"), await final_answer(agent, "fuzz"))
                await agent.send({"id": "probe", "type": "ping"})
                assert (await final_answer(agent, "probe"))["type"] == "pong"

    trio.run(scenario)
