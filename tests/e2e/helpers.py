"""Small raw clients for end-to-end tests: plain HTTP and a plain WebSocket, no SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker
import h11
import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.conftest import Server


@asynccontextmanager
async def http(server: Server, *, key: str | None = "default") -> AsyncIterator[httpx.AsyncClient]:
    headers = {"X-API-Key": server.api_key if key == "default" else key} if key else {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


@asynccontextmanager
async def sandbox(server: Server) -> AsyncIterator[dict[str, Any]]:
    """A sandbox made with the seed's create route, destroyed afterwards."""
    async with http(server) as client:
        created = (await client.post("/sandbox/create")).raise_for_status().json()
        try:
            yield created
        finally:
            with trio.CancelScope(shield=True):
                await client.post(f"/sandbox/{created['sandboxId']}/destroy")


@asynccontextmanager
async def websocket(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[WebSocketConnection]:
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    async with open_websocket_url(
        url, extra_headers=extra, max_message_size=64 * 1024 * 1024
    ) as ws:
        yield ws


async def call(
    ws: WebSocketConnection, message: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    await ws.send_message(json.dumps(message))
    return await receive(ws, timeout)


async def receive(ws: WebSocketConnection, timeout: float = 30) -> dict[str, Any]:
    with trio.fail_after(timeout):
        reply: dict[str, Any] = json.loads(await ws.get_message())
    return reply


class Inbox:
    """Reads one WebSocket and sorts messages by request id, for tests with several at once."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._held: dict[Any, list[dict[str, Any]]] = {}

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message))

    async def next(self, request_id: Any, timeout: float = 30) -> dict[str, Any]:
        """The next message for `request_id`, holding on to everything else meanwhile."""
        with trio.fail_after(timeout):
            while not self._held.get(request_id):
                message: dict[str, Any] = json.loads(await self.ws.get_message())
                self._held.setdefault(message.get("id"), []).append(message)
        return self._held[request_id].pop(0)

    async def call(self, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        await self.send(message)
        return await self.next(message["id"], timeout)


async def until_running(
    agent_url: str, command_line: str, count: int = 1, within: float = 15
) -> None:
    """Until `count` processes whose command line matches `command_line` (a regular
    expression) run in the sandbox: the commands a test sent on another connection have
    started. Asked (`pgrep -c -f`) on a connection of its own."""
    probe = {
        "id": "until-running",
        "type": "exec",
        "cmd": "pgrep",
        "args": ["-c", "-f", command_line],
    }
    async with websocket(agent_url) as ws:
        with trio.fail_after(within):
            while (await call(ws, probe))["stdout"] != f"{count}\n":  # noqa: ASYNC110
                await trio.sleep(0.05)


def containers_of(client: docker.DockerClient, sandbox_id: str) -> list[dict[str, Any]]:
    """The sandbox's container (running or not) as the Docker Engine lists it."""
    found: list[dict[str, Any]] = client.api.containers(
        all=True, filters={"label": [f"insien.sandbox.id={sandbox_id}"]}
    )
    return found


async def kill_agent(client: docker.DockerClient, sandbox_id: str) -> None:
    """SIGKILL the agent from outside: user code inside cannot, it runs as another uid."""
    (container,) = containers_of(client, sandbox_id)

    def _kill() -> None:
        exit_code, output = client.containers.get(container["Id"]).exec_run(
            ["sh", "-c", "kill -9 $(pgrep -u 0 -x insien-agent)"], user="0"
        )
        assert exit_code == 0, output

    await trio.to_thread.run_sync(_kill)


class EventStream:
    """A plain Server-Sent Events client over h11 (httpx's streams leave nested async
    generators open when a test stops reading a stream that never ends)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._http = h11.Connection(h11.CLIENT)
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _receive(self) -> Any:
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                self._http.receive_data(await self._stream.receive_some(65536))
                continue
            return event

    async def next(self) -> dict[str, Any] | None:
        """The next event (`id`, `event`, and `data` parsed as JSON), or None at its end."""
        while True:
            block, separator, rest = self._buffer.partition(b"\n\n")
            if separator:
                self._buffer = rest
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if line and not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                if "data" in fields:
                    return {
                        "id": fields.get("id"),
                        "event": fields.get("event"),
                        "data": json.loads(fields["data"]),
                    }
                continue
            event = await self._receive()
            if isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return None


@asynccontextmanager
async def event_stream(
    server: Server, key: str, last_id: str | None = None
) -> AsyncIterator[EventStream]:
    """`GET /events` as `key`'s tenant; the response's head is read before this yields."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        client = EventStream(stream)
        headers = [("Host", f"{host}:{port}"), ("X-API-Key", key), ("Accept", "text/event-stream")]
        if last_id is not None:
            headers.append(("Last-Event-ID", last_id))
        request = h11.Request(method="GET", target="/events", headers=headers)
        await stream.send_all(client._http.send(request) + client._http.send(h11.EndOfMessage()))
        response = await client._receive()
        assert isinstance(response, h11.Response)
        client.status = response.status_code
        client.headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        yield client
