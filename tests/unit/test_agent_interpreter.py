"""Code contexts in the agent, run as a process of its own (the same kernel runs in sandboxes;
tests/e2e/test_interpreter.py drives it through the server and the SDK)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.agent_process import AgentProcess, run_agent


async def run(
    agent: AgentProcess, request_id: int, **fields: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    await agent.send({"id": request_id, "type": "runCode", **fields})
    events: list[dict[str, Any]] = []
    while True:
        message = await agent.receive(timeout=30)
        if message["type"] in ("codeOutput", "codeResult"):
            events.append(message)
        else:
            return events, message


async def test_cells_keep_state_stream_output_and_give_results(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        events, done = await run(agent, 1, code="x = 40\nprint('hello')\nx + 2")
        assert done["type"] == "runCodeResponse", done
        assert done["error"] is None
        assert done["executionCount"] == 1
        assert [e["text"] for e in events if e["type"] == "codeOutput"] == ["hello\n"]
        results = [e["result"] for e in events if e["type"] == "codeResult"]
        assert results == [{"text": "42", "isMainResult": True}]
        events, done = await run(agent, 2, code="1 / 0")
        assert done["error"]["name"] == "ZeroDivisionError"
        assert "1 / 0" in done["error"]["traceback"]
        events, done = await run(agent, 3, code="import os; os.write(2, b'raw\\n'); x")
        assert [e["text"] for e in events if e["type"] == "codeOutput"] == ["raw\n"]
        assert [e["result"]["text"] for e in events if e["type"] == "codeResult"] == ["40"]


async def test_a_client_that_reads_nothing_stops_the_cell_not_the_agent(tmp_path: Path) -> None:
    """Code events are credited like output: without credit the agent sends its window of 8
    and no more (the cell blocks in its writes); past the timeout and its grace the rest is
    dropped, so the interrupt ends the cell and the context lives on."""
    async with run_agent(tmp_path) as agent:
        flood = "while True:\n    print('x' * 1000)"
        await agent.send({"id": 1, "type": "runCode", "code": flood, "timeout": 0.3})
        kinds = []
        while True:
            message = await agent.receive(timeout=20)
            kinds.append(message["type"])
            if message["type"] != "codeOutput":
                break
        assert kinds.count("codeOutput") == 8, kinds
        assert message["type"] == "runCodeResponse", message
        assert message["timedOut"] is True, message
        assert message["truncated"] is True, message
        assert message["error"]["name"] == "KeyboardInterrupt", message
        events, _ = await run(agent, 2, code="'alive'")
        assert [e["result"]["text"] for e in events] == ["'alive'"]


async def test_a_warmed_context_takes_the_environment_of_its_first_use(tmp_path: Path) -> None:
    """`warmContexts` starts the default context ahead of use; the first cell runs in that
    process with the variables an `env` message set afterwards (as a claim sends them), and
    two first cells at once share the one default context."""
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": 1, "type": "warmContexts", "languages": ["py", "python"]})
        warmed = await agent.receive(timeout=30)
        assert warmed == {"id": 1, "type": "warmContextsResponse", "languages": ["python"]}
        await agent.send({"type": "env", "env": {"CLAIMED": "yes"}})
        await agent.send({"id": 2, "type": "runCode", "code": "import os\nx = os.getpid()"})
        await agent.send({"id": 3, "type": "runCode", "code": "os.environ.get('CLAIMED')"})
        answers: dict[int, list[dict[str, Any]]] = {2: [], 3: []}
        while sum(m["type"] == "runCodeResponse" for ms in answers.values() for m in ms) < 2:
            message = await agent.receive(timeout=30)
            answers[message["id"]].append(message)
        assert answers[3][0]["result"]["text"] == "'yes'"
        events, done = await run(agent, 4, code="x")
        assert done["error"] is None
        assert events[0]["result"]["text"].isdigit()


async def test_warm_contexts_refuses_what_it_cannot_start(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        for request_id, languages in enumerate(["python", ["cobol"], [3]], start=1):
            await agent.send({"id": request_id, "type": "warmContexts", "languages": languages})
            answer = await agent.receive(timeout=10)
            assert (answer["type"], answer["code"]) == ("error", "BAD_REQUEST"), answer


async def test_a_cell_sent_to_a_context_killed_a_moment_ago_says_it_died(tmp_path: Path) -> None:
    """The cell's line meets a dead process's pipe before the context's reader has noticed:
    the answer is CONTEXT_DIED with how it ended, never INTERNAL."""
    async with run_agent(tmp_path) as agent:
        for round_ in range(5):
            base = round_ * 10
            await agent.send({"id": base + 1, "type": "createContext"})
            made = await agent.receive(timeout=30)
            context = made["context"]["id"]
            events, _ = await run(agent, base + 2, code="import os\nos.getpid()", context=context)
            os.kill(int(events[0]["result"]["text"]), signal.SIGKILL)
            _, answer = await run(agent, base + 3, code="1", context=context)
            assert (answer["type"], answer["code"]) == ("error", "CONTEXT_DIED"), answer
            assert "killed by signal 9" in answer["message"]
