"""The agent's main loop: read requests, run each as its own task, answer every one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import PROTOCOL_VERSION, __version__
from .commands import handle_exec
from .errors import BAD_REQUEST, INTERNAL, TOO_LARGE, UNKNOWN_TYPE, AgentError
from .files import handle_read, handle_write
from .settings import AgentSettings
from .wire import LineSplitter, Outbox, open_stdout

Message = dict[str, Any]
Handler = Callable[[Message, AgentSettings], Awaitable[Message]]

log = logging.getLogger("insien_agent")

HANDLERS: dict[str, Handler] = {
    "exec": handle_exec,
    "write": handle_write,
    "read": handle_read,
}


def _valid_id(value: object) -> bool:
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


class Agent:
    """Owns the request tasks; each answers exactly once, success or error."""

    def __init__(self, outbox: Outbox, settings: AgentSettings) -> None:
        self._outbox = outbox
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    async def hello(self) -> None:
        await self._outbox.send(
            {
                "type": "ready",
                "protocol": PROTOCOL_VERSION,
                "agent": "insien-agent",
                "version": __version__,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "types": sorted(HANDLERS),
            }
        )

    async def error(self, request_id: object, code: str, message: str) -> None:
        await self._outbox.send(
            {"id": request_id, "type": "error", "code": code, "message": message}
        )

    async def receive_line(self, line: bytes | None) -> None:
        """Parse one request line and start its handler; never raises for bad input."""
        if line is None:
            await self.error(
                None, TOO_LARGE, f"request line exceeds {self._settings.max_line} bytes"
            )
            return
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            await self.error(None, BAD_REQUEST, "request is not valid JSON")
            return
        if not isinstance(msg, dict):
            await self.error(None, BAD_REQUEST, "request must be a JSON object")
            return
        request_id = msg.get("id")
        if not _valid_id(request_id):
            await self.error(None, BAD_REQUEST, "field 'id' must be a string or an integer")
            return
        kind = msg.get("type")
        if not isinstance(kind, str):
            await self.error(request_id, BAD_REQUEST, "field 'type' must be a string")
            return
        handler = HANDLERS.get(kind)
        if handler is None:
            await self.error(request_id, UNKNOWN_TYPE, f"unknown request type {kind!r}")
            return
        task = asyncio.create_task(self._run(handler, msg, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, msg: Message, request_id: object) -> None:
        try:
            response = await handler(msg, self._settings)
        except AgentError as exc:
            await self.error(request_id, exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("request %r failed", request_id)
            await self.error(request_id, INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        await self._outbox.send({"id": request_id, **response})

    async def drain(self) -> None:
        """Let every started request finish and answer (used when stdin closes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def serve(settings: AgentSettings) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    agent = Agent(Outbox(await open_stdout(), settings.max_line), settings)
    await agent.hello()
    splitter = LineSplitter(settings.max_line)
    while chunk := await reader.read(256 * 1024):
        for line in splitter.feed(chunk):
            await agent.receive_line(line)
    await agent.drain()
