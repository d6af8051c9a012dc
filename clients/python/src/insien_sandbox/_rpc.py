"""One WebSocket to a sandbox: requests out, answers routed back to their callers by id."""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import anyio
import httpx
import wsproto.events
import wsproto.utilities
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
)

from ._errors import RPCError, SandboxClosedError
from ._protocol import EVENT_TYPES

Message = dict[str, Any]

STREAM_BUFFER = 256
CANCEL_TIMEOUT = 5.0
"""How long an abandoned request's `cancel` may take to send before the SDK gives up on it."""


def is_final(message: Message) -> bool:
    """Whether a message ends its request: every type but the protocol's events does."""
    return message.get("type") not in EVENT_TYPES


Connect = Callable[[str], AbstractAsyncContextManager[AsyncWebSocketSession]]

RECONNECT_WINDOW = 60.0
"""How long the SDK keeps trying to reach a sandbox whose server went away (a restart)."""
RECONNECT_CODES = frozenset({1006, 1011, 1012, 1013})
"""Close codes after which the sandbox may still be there: abnormal closure, server error,
service restart, try again later. 1001 (the sandbox ended) and a normal close end for good."""


class RPCConnection:
    """Multiplexes concurrent requests over one WebSocket, reconnecting across server restarts.

    The reader hands each message to the channel of the request it answers. A streaming
    request's channel is bounded: if its consumer stops taking messages, the reader waits,
    which pushes back through the server to the command itself.

    Every connection carries this object's session id. If the server restarts (or the
    connection drops), requests keep waiting while it reconnects: the server delivers what the
    sandbox answered meanwhile, then a `resumed` event naming the requests still running; any
    other request that was waiting has been lost and fails with `LOST`.
    """

    def __init__(self, connect: Connect, reconnect_window: float = RECONNECT_WINDOW) -> None:
        self._connect = connect
        self._reconnect_window = reconnect_window
        self.session = secrets.token_urlsafe(12)
        self._ws: AsyncWebSocketSession | None = None
        self._connected = anyio.Event()
        self._waiters: dict[str, MemoryObjectSendStream[Message]] = {}
        self._awaiting_resume: set[str] = set()
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def run(
        self, *, task_status: TaskStatus[RPCConnection] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the connection (and reconnect) until it ends for good; then fail every waiter."""
        started = False
        lost_at: float | None = None
        try:
            while True:
                code: int | None = None
                try:
                    async with self._connect(self.session) as ws:
                        self._ws = ws
                        self._connected.set()
                        lost_at = None
                        if not started:
                            started = True
                            task_status.started(self)
                        code = await self._read(ws)
                except (OSError, httpx.TransportError, WebSocketUpgradeError) as exc:
                    if not started:
                        raise
                    if isinstance(exc, WebSocketUpgradeError):  # the sandbox is gone, or the key
                        self._closed_reason = f"cannot reconnect: HTTP {exc.response.status_code}"
                        return
                    code = 1006
                self._ws = None
                self._connected = anyio.Event()
                self._awaiting_resume = set(self._waiters)
                if code not in RECONNECT_CODES:
                    return
                lost_at = lost_at or anyio.current_time()
                if anyio.current_time() - lost_at > self._reconnect_window:
                    self._closed_reason = f"connection lost for over {self._reconnect_window:g}s"
                    return
                await anyio.sleep(0.25)
        finally:
            self._closed_reason = self._closed_reason or "connection closed"
            self._connected.set()  # wake senders so they see the connection is gone
            for waiter in self._waiters.values():
                waiter.close()
            self._waiters.clear()

    async def _read(self, ws: AsyncWebSocketSession) -> int | None:
        """Route messages until the connection closes; returns its close code."""
        try:
            while True:
                event = await ws.receive()
                if not isinstance(event, wsproto.events.Message):
                    continue
                message = parse_message(event.data)
                if message is None:
                    continue
                if message.get("type") == "resumed" and "id" not in message:
                    self._resumed(message)
                    continue
                key = str(message.get("id"))
                waiter = self._waiters.get(key)
                if waiter is None:
                    continue
                try:
                    await waiter.send(message)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._waiters.pop(key, None)
                    continue
                if is_final(message):
                    self._waiters.pop(key, None)
                    waiter.close()
        except WebSocketNetworkError:
            return 1006
        except WebSocketDisconnect as exc:
            detail = f"{exc.code}: {exc.reason}" if exc.reason else str(exc.code)
            self._closed_reason = (
                None if exc.code in RECONNECT_CODES else (f"connection closed ({detail})")
            )
            return int(exc.code)

    def _resumed(self, message: Message) -> None:
        """After a reconnect: what was waiting and is neither answered nor running is lost."""
        running = {str(i) for i in message.get("inFlight") or []}
        for key in self._awaiting_resume - running:
            waiter = self._waiters.pop(key, None)
            if waiter is not None:
                lost = {
                    "id": key,
                    "type": "error",
                    "code": "LOST",
                    "message": "the request was lost while the connection was down",
                }
                with suppress(
                    anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    waiter.send_nowait(lost)
                waiter.close()
        self._awaiting_resume = set()

    def closed_error(self, doing: str | None = None) -> SandboxClosedError:
        """Why the connection ended, as the error a waiting call raises."""
        reason = self._closed_reason or "connection closed"
        return SandboxClosedError(f"{doing}: {reason}" if doing else reason)

    async def _send_text(self, text: str) -> None:
        """Send on the current connection, waiting out a reconnect."""
        while True:
            if self._closed_reason is not None:
                raise self.closed_error()
            ws = self._ws
            if ws is None:
                await self._connected.wait()
                continue
            try:
                await ws.send_text(text)
                return
            except (WebSocketNetworkError, wsproto.utilities.LocalProtocolError):
                await anyio.sleep(0.05)  # the reader notices, and reconnects

    @asynccontextmanager
    async def stream(self, message: Message) -> AsyncIterator[MemoryObjectReceiveStream[Message]]:
        """Send a request; yields the channel of every message answering it, final included."""
        if self._closed_reason is not None:
            raise self.closed_error()
        request_id = f"r{next(self._ids)}"
        send, receive = anyio.create_memory_object_stream[Message](STREAM_BUFFER)
        self._waiters[request_id] = send
        sent = False
        try:
            await self._send_text(json.dumps({**message, "id": request_id}))
            sent = True
            yield receive
        finally:
            receive.close()
            # Still registered: no final answer came. The caller gave up (cancelled, timed
            # out, or left the block), so the request is cancelled in the sandbox too: a
            # foreground command is killed, a background one is only no longer followed.
            unfinished = self._waiters.pop(request_id, None) is not None
            send.close()
            if sent and unfinished:
                await self._cancel_quietly(request_id)

    async def _cancel_quietly(self, request_id: str) -> None:
        """Ask the server to cancel a request, shielded and bounded: it runs while the caller
        is being cancelled, and must neither block it for long nor raise."""
        if self._closed_reason is not None or self._ws is None:
            return
        with (
            anyio.move_on_after(CANCEL_TIMEOUT, shield=True),
            suppress(
                SandboxClosedError,
                WebSocketNetworkError,
                wsproto.utilities.LocalProtocolError,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ),
        ):
            await self.send({"type": "cancel", "target": request_id})

    async def call(self, message: Message) -> Message:
        """Send one request and wait for its final answer; an `error` answer raises RPCError."""
        async with self.stream(message) as replies:
            async for reply in replies:
                if is_final(reply):
                    return check(reply)
        raise self.closed_error()

    async def send(self, message: Message) -> str:
        """Send without waiting for the answer (used for `cancel`); returns the id used."""
        request_id = f"r{next(self._ids)}"
        await self._send_text(json.dumps({**message, "id": request_id}))
        return request_id


def parse_message(raw: str | bytes) -> Message | None:
    """One message from the server. A binary message is a frame: a JSON line describing it
    (`id`, `type`, `stream`), then its raw bytes, which become the message's `data`."""
    if isinstance(raw, bytes):
        head, newline, data = raw.partition(b"\n")
        if not newline:
            return None
        message = json.loads(head)
        if isinstance(message, dict):
            message["data"] = data
    else:
        message = json.loads(raw)
    return message if isinstance(message, dict) else None


def check(reply: Message) -> Message:
    if reply.get("type") == "error":
        raise RPCError(str(reply.get("code")), str(reply.get("message")))
    return reply
