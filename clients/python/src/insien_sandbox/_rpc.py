"""One WebSocket to a sandbox: requests out, answers routed back to their callers by id."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ._errors import RPCError, SandboxClosedError

Message = dict[str, Any]


FINAL_EXCEPT = frozenset({"output", "spawnResponse", "attachResponse"})
STREAM_BUFFER = 256


def is_final(message: Message) -> bool:
    return message.get("type") not in FINAL_EXCEPT


class RPCConnection:
    """Multiplexes concurrent requests over one WebSocket. Run `run()` in a nursery.

    The reader hands each message to the channel of the request it answers. A streaming
    request's channel is bounded: if its consumer stops taking messages, the reader waits,
    which pushes back through the server to the command itself.
    """

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._waiters: dict[str, trio.MemorySendChannel[Message]] = {}
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def run(self) -> None:
        try:
            while True:
                data = await self._ws.get_message()
                message = json.loads(data)
                if not isinstance(message, dict):
                    continue
                key = str(message.get("id"))
                waiter = self._waiters.get(key)
                if waiter is None:
                    continue
                try:
                    await waiter.send(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._waiters.pop(key, None)
                    continue
                if is_final(message):
                    self._waiters.pop(key, None)
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

    def _closed_error(self) -> SandboxClosedError:
        return SandboxClosedError(self._closed_reason or "connection closed")

    @asynccontextmanager
    async def stream(self, message: Message) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Send a request; yields the channel of every message answering it, final included."""
        if self._closed_reason is not None:
            raise self._closed_error()
        request_id = f"r{next(self._ids)}"
        send, receive = trio.open_memory_channel[Message](STREAM_BUFFER)
        self._waiters[request_id] = send
        try:
            try:
                await self._ws.send_message(json.dumps({**message, "id": request_id}))
            except ConnectionClosed:
                raise self._closed_error() from None
            async with receive:
                yield receive
        finally:
            self._waiters.pop(request_id, None)
            send.close()

    async def call(self, message: Message) -> Message:
        """Send one request and wait for its final answer; an `error` answer raises RPCError."""
        async with self.stream(message) as replies:
            async for reply in replies:
                if is_final(reply):
                    return check(reply)
        raise self._closed_error()

    async def send(self, message: Message) -> str:
        """Send without waiting for the answer (used for `cancel`); returns the id used."""
        request_id = f"r{next(self._ids)}"
        try:
            await self._ws.send_message(json.dumps({**message, "id": request_id}))
        except ConnectionClosed:
            raise self._closed_error() from None
        return request_id


def check(reply: Message) -> Message:
    if reply.get("type") == "error":
        raise RPCError(str(reply.get("code")), str(reply.get("message")))
    return reply
