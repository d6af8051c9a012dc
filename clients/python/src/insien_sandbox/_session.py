"""What a sandbox's namespaces share: the REST client, the sandbox's nursery, the sandbox made
on first use, and its RPC connection, opened lazily and held (and re-made) in that nursery.

`AsyncSandbox`, `Commands`, `Files` and `Pty` all work through one `Session`; none reaches into
another's private parts.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from typing import Any

import httpx
import trio
from trio_websocket import HandshakeError, WebSocketConnection, open_websocket_url

from ._errors import ConnectError, InsienError, NotFoundError, error_from_response
from ._rpc import RPCConnection

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
RECEIVE_BUFFER = 256 * 1024
MESSAGE_QUEUE = 16
REST_TIMEOUT = 60.0


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
        self, api_key: str, base_url: str, options: dict[str, Any], sandbox_id: str | None
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.options = options
        self.sandbox_id = sandbox_id
        self.owned = sandbox_id is None
        self.agent_url = f"{ws_base(base_url)}/agent/{sandbox_id}" if sandbox_id else None
        self.destroyed = False
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._rpc: RPCConnection | None = None
        self._ws_scope: trio.CancelScope | None = None
        self._lock = trio.Lock()

    async def open(self, stack: AsyncExitStack) -> None:
        """Enter the REST client and the nursery into the caller's exit stack."""
        self._http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=self.base_url,
                headers={"X-API-Key": self.api_key},
                timeout=REST_TIMEOUT,
            )
        )
        self._nursery = await stack.enter_async_context(trio.open_nursery())

    def client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._http

    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._nursery

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
        async with self._lock:
            if self.destroyed:
                raise InsienError("this sandbox has been destroyed")
            if self._rpc is None:
                await self.create()
                assert self.agent_url is not None
                self._rpc = await self.nursery().start(self._hold_connection, self.agent_url)
            return self._rpc

    async def _hold_connection(
        self, url: str, *, task_status: trio.TaskStatus[RPCConnection]
    ) -> None:
        def connect(session: str) -> AbstractAsyncContextManager[WebSocketConnection]:
            separator = "&" if "?" in url else "?"
            return open_websocket_url(
                f"{url}{separator}session={session}",
                # After a server restart the token may not verify (a new JWT secret); the
                # key always does.
                extra_headers=[(b"X-API-Key", self.api_key.encode())],
                max_message_size=MAX_MESSAGE_SIZE,
                # trio-websocket reads 4 KiB at a time by default: far too little for
                # output events of up to 256 KiB.
                receive_buffer_size=RECEIVE_BUFFER,
                message_queue_size=MESSAGE_QUEUE,
            )

        with trio.CancelScope() as scope:
            self._ws_scope = scope
            try:
                await RPCConnection(connect).run(task_status=task_status)
            except HandshakeError as exc:
                raise ConnectError(f"WebSocket to the sandbox refused: {exc}") from exc
            except OSError as exc:
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
