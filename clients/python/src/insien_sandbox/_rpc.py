"""One WebSocket to a sandbox: requests out, answers routed back to their callers by id."""

from __future__ import annotations

import itertools
import json
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ._errors import RPCError, SandboxClosedError

Message = dict[str, Any]


class RPCConnection:
    """Multiplexes concurrent requests over one WebSocket. Run `run()` in a nursery."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._waiters: dict[str, trio.MemorySendChannel[Message]] = {}
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None

    async def run(self) -> None:
        try:
            while True:
                data = await self._ws.get_message()
                message = json.loads(data)
                if not isinstance(message, dict):
                    continue
                waiter = self._waiters.pop(str(message.get("id")), None)
                if waiter is not None:
                    waiter.send_nowait(message)
                    waiter.close()
        except ConnectionClosed as exc:
            reason = exc.reason
            if reason is not None:
                detail = f"{reason.code}: {reason.reason}" if reason.reason else str(reason.code)
                self._closed_reason = f"connection closed ({detail})"
        finally:
            self._closed_reason = self._closed_reason or "connection closed"
            for waiter in self._waiters.values():
                waiter.close()
            self._waiters.clear()

    async def call(self, message: Message) -> Message:
        """Send one request and wait for its answer; an `error` answer raises RPCError."""
        if self._closed_reason is not None:
            raise SandboxClosedError(self._closed_reason)
        request_id = f"r{next(self._ids)}"
        send, receive = trio.open_memory_channel[Message](1)
        self._waiters[request_id] = send
        try:
            await self._ws.send_message(json.dumps({**message, "id": request_id}))
            async with receive:
                try:
                    reply = await receive.receive()
                except trio.EndOfChannel:
                    raise SandboxClosedError(self._closed_reason or "connection closed") from None
        except ConnectionClosed:
            raise SandboxClosedError(self._closed_reason or "connection closed") from None
        finally:
            self._waiters.pop(request_id, None)
        if reply.get("type") == "error":
            raise RPCError(str(reply.get("code")), str(reply.get("message")))
        return reply
