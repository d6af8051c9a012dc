"""What a sandbox's namespaces share: the REST client, the sandbox's task group, the sandbox made
on first use, and its RPC connection, opened lazily and held (and re-made) in that task group.

`AsyncSandbox`, `Commands`, `Files` and `Pty` all work through one `Session`; none reaches into
another's private parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus
from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws

from ._errors import ConnectError, InsienError, NotFoundError, error_from_response
from ._rpc import RPCConnection

MAX_MESSAGE = 33 * 1024 * 1024
"""The largest message taken from the server: its own cap (32 MiB, INSIEN_MAX_MESSAGE_BYTES)
and a binary frame's description. httpx-ws 0.10 closes with 1009 past it (and reads up to it
at a time); 0.9 only read that much at a time."""
REST_TIMEOUT = 60.0
PING_INTERVAL = 20.0
"""A connection that stops answering pings for this long is treated as lost (and re-made)."""


def ws_base(base_url: str) -> str:
    return base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


async def rest_request(
    client: httpx.AsyncClient,
    base_url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One REST call; an error answer raises its typed APIError."""
    try:
        response = await client.request(method, path, json=body, params=params)
    except httpx.TransportError as exc:
        raise ConnectError(f"cannot reach Insien at {base_url}: {exc}") from exc
    if response.is_error:
        raise error_from_response(response)
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise InsienError(f"unexpected response from {path}: {response.text[:200]}")
    return answer


class Session:
    """One sandbox as seen from this client (see the module's docstring)."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        options: dict[str, Any],
        sandbox_id: str | None,
        reconnect_window: float,
    ) -> None:
        self.api_key = api_key
        self.reconnect_window = reconnect_window
        self.base_url = base_url
        self.options = options
        self.sandbox_id = sandbox_id
        self.owned = sandbox_id is None
        self.agent_url = f"{ws_base(base_url)}/agent/{sandbox_id}" if sandbox_id else None
        self.destroyed = False
        self._http: httpx.AsyncClient | None = None
        self._tasks: TaskGroup | None = None
        self._rpc: RPCConnection | None = None
        self._ws_scope: anyio.CancelScope | None = None
        self._lock: anyio.Lock | None = None

    async def open(self, stack: AsyncExitStack) -> None:
        """Enter the REST client and the task group into the caller's exit stack.

        Works under asyncio and trio alike (anyio); everything here belongs to the event loop
        that opened it."""
        self._lock = anyio.Lock()
        self._http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=self.base_url,
                headers={"X-API-Key": self.api_key},
                timeout=REST_TIMEOUT,
            )
        )
        self._tasks = await stack.enter_async_context(anyio.create_task_group())

    def client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._http

    def tasks(self) -> TaskGroup:
        """Where the sandbox's background tasks live (its connection, followed processes)."""
        if self._tasks is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._tasks

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await rest_request(self.client(), self.base_url, method, path, body)

    async def create(self) -> str:
        """The sandbox's id, creating it first if this is the first use."""
        if self.sandbox_id is None:
            body = await self.request("POST", "/sandbox/create", self.options or None)
            self.sandbox_id = str(body["sandboxId"])
            self.agent_url = str(body["agentUrl"])
        return self.sandbox_id

    async def connection(self) -> RPCConnection:
        """The sandbox's WebSocket, creating the sandbox first if this is the first use."""
        if self._lock is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        async with self._lock:
            if self.destroyed:
                raise InsienError("this sandbox has been destroyed")
            if self._rpc is None:
                await self.create()
                assert self.agent_url is not None
                self._rpc = await self.tasks().start(self._hold_connection, self.agent_url)
            return self._rpc

    async def _hold_connection(
        self, url: str, *, task_status: TaskStatus[RPCConnection] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        @asynccontextmanager
        async def connect(session: str) -> AsyncIterator[AsyncWebSocketSession]:
            separator = "&" if "?" in url else "?"
            # After a server restart the token may not verify (a new JWT secret); the key
            # always does.
            async with ws_session(
                self.client(), f"{url}{separator}session={session}", self.api_key
            ) as ws:
                yield ws

        with anyio.CancelScope() as scope:
            self._ws_scope = scope
            try:
                rpc = RPCConnection(connect, self.reconnect_window)
                await rpc.run(task_status=task_status)
            except WebSocketUpgradeError as exc:
                raise ConnectError(
                    f"WebSocket to the sandbox refused: HTTP {exc.response.status_code}"
                ) from exc
            except (OSError, httpx.TransportError) as exc:
                raise ConnectError(f"cannot reach the sandbox WebSocket: {exc}") from exc

    def close_connection(self) -> None:
        if self._ws_scope is not None:
            self._ws_scope.cancel()
        self._rpc = None

    async def destroy(self) -> None:
        """Destroy the sandbox and its container. Calling it twice is harmless."""
        if self.sandbox_id is None or self.destroyed:
            self.destroyed = True
            return
        self.destroyed = True
        self.close_connection()
        # A sandbox already destroyed elsewhere is the outcome the caller asked for.
        with suppress(NotFoundError):
            await self.request("POST", f"/sandbox/{self.sandbox_id}/destroy")


@asynccontextmanager
async def ws_session(
    client: httpx.AsyncClient, url: str, api_key: str
) -> AsyncIterator[AsyncWebSocketSession]:
    """A WebSocket over the client's HTTP stack (httpx-ws: anyio, so asyncio or trio).

    httpx-ws runs its reader in a task group, which wraps what leaves it in an exception
    group; a lone error is handed on as itself so callers can catch it by type."""
    try:
        opening: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
            url.replace("wss://", "https://", 1).replace("ws://", "http://", 1),
            client,
            headers={"X-API-Key": api_key},
            max_message_size_bytes=MAX_MESSAGE,
            keepalive_ping_interval_seconds=PING_INTERVAL,
            keepalive_ping_timeout_seconds=PING_INTERVAL,
        )
        async with opening as ws:
            yield ws
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
