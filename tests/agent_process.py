"""Runs the agent as a local subprocess, speaking to it exactly as the orchestrator does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

AGENT_DIR = Path(__file__).resolve().parents[1] / "agent"


class AgentProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = b""
        self.hello: dict[str, Any] = {}
        self.last_seq = 0

    async def send_raw(self, data: bytes) -> None:
        await self._stdin.send_all(data)

    async def send(self, message: Any) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        """The next message, its sequence number checked (one more than the last) and removed."""
        message = await self.receive_line(timeout)
        if message.get("type") != "resumeResponse":
            seq = message.pop("seq")
            assert seq == self.last_seq + 1, (seq, self.last_seq, message)
            self.last_seq = seq
        return message

    async def receive_line(self, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self._stdout.receive_some(65536)
                if not chunk:
                    raise EOFError("agent closed stdout")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    async def receive_many(self, count: int, timeout: float = 10) -> dict[Any, dict[str, Any]]:
        replies = [await self.receive(timeout) for _ in range(count)]
        return {reply.get("id"): reply for reply in replies}


@asynccontextmanager
async def run_agent(workdir: Path, **env: str) -> AsyncIterator[AgentProcess]:
    environment = {
        **os.environ,
        "PYTHONPATH": str(AGENT_DIR),
        "INSIEN_AGENT_WORKDIR": str(workdir),
        # Outside a container there is no sandbox user to switch to.
        "INSIEN_AGENT_USER": "agent",
        **env,
    }
    process = await trio.lowlevel.open_process(
        # -S as in a sandbox: the agent needs only the standard library, not this
        # virtualenv's site-packages (and each start is a fifth quicker without them)
        [sys.executable, "-S", "-m", "insien_agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environment,
        cwd=str(workdir),
    )
    agent = AgentProcess(process)
    try:
        agent.hello = await agent.receive()
        assert agent.hello["type"] == "ready"
        yield agent
    finally:
        process.kill()
        await process.wait()
