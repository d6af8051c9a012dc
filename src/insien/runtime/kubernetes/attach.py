"""A pod's stdio over the `attach` subresource: a WebSocket whose binary messages start with a
channel byte (0 stdin, 1 stdout, 2 stderr, 3 the API server's status when the stream ends),
`v4.channel.k8s.io`, or `v5.channel.k8s.io` where a newer API server offers it (the same
framing, plus a close message on channel 255 that this channel does not need).

The WebSocket lives in a task of the runtime's own nursery (its client's task groups must be
left by the task that entered them, and a sandbox's link outlives the request that made it);
`KubeChannel` talks to that task through memory channels: one writer task per stream."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import httpx
import trio
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    aconnect_ws,
)

from ..base import RuntimeFailure, StreamKind

PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
MAX_MESSAGE = 256 * 1024
STREAMS = {1: StreamKind.STDOUT, 2: StreamKind.STDERR}
Piece = tuple[StreamKind, bytes]


class KubeChannel:
    """An `AgentChannel` over an attach WebSocket run by `run_channel`."""

    def __init__(
        self,
        to_pod: trio.MemorySendChannel[bytes],
        from_pod: trio.MemoryReceiveChannel[Piece],
        scope: trio.CancelScope,
    ) -> None:
        self._to_pod = to_pod
        self._from_pod = from_pod
        self._scope = scope

    async def send_all(self, data: bytes) -> None:
        try:
            await self._to_pod.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.BrokenResourceError("the attach stream closed") from None

    async def receive(self) -> Piece | None:
        try:
            return await self._from_pod.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def aclose(self) -> None:
        self._scope.cancel()
        await trio.lowlevel.checkpoint()


async def run_channel(
    http: httpx.AsyncClient, path: str, *, task_status: trio.TaskStatus[KubeChannel]
) -> None:
    """Open the attach WebSocket, report the channel, then carry bytes until either side ends."""
    to_pod_send, to_pod = trio.open_memory_channel[bytes](16)
    from_pod_send, from_pod = trio.open_memory_channel[Piece](64)
    url = f"{path}?container=agent&stdin=true&stdout=true&stderr=true"
    started = False
    with trio.CancelScope() as scope:
        try:
            session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
                url, http, subprotocols=PROTOCOLS, max_message_size_bytes=4 * MAX_MESSAGE
            )
            async with session as ws, from_pod_send:
                task_status.started(KubeChannel(to_pod_send, from_pod, scope))
                started = True
                async with trio.open_nursery() as both:
                    both.start_soon(_write, ws, to_pod)
                    await _read(ws, from_pod_send)
                    both.cancel_scope.cancel()
        except* (HTTPXWSException, httpx.HTTPError, OSError) as group:
            if not started:
                raise RuntimeFailure(f"attach refused: {group.exceptions[0]}") from None
    to_pod_send.close()


async def _write(ws: AsyncWebSocketSession, to_pod: trio.MemoryReceiveChannel[bytes]) -> None:
    async for data in to_pod:
        for start in range(0, len(data), MAX_MESSAGE):
            await ws.send_bytes(b"\x00" + data[start : start + MAX_MESSAGE])


async def _read(ws: AsyncWebSocketSession, from_pod: trio.MemorySendChannel[Piece]) -> None:
    while True:
        try:
            message = await ws.receive_bytes()
        except WebSocketDisconnect:
            return
        if not message:
            continue
        kind = STREAMS.get(message[0])
        if kind is not None and len(message) > 1:
            await from_pod.send((kind, message[1:]))
        elif message[0] == 3 and len(message) > 1:
            return  # the container ended: the API server's status comes last
