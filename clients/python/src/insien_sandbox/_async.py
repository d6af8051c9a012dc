"""AsyncSandbox: the trio flavour of the SDK. The blocking Sandbox wraps this one."""

from __future__ import annotations

import builtins
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from types import TracebackType
from typing import Any

import httpx
import trio
from trio_websocket import HandshakeError, WebSocketConnection, open_websocket_url

from ._commands import Commands, Pty
from ._config import resolve
from ._errors import ConnectError, InsienError, NotFoundError, api_error
from ._files import Files
from ._rpc import RPCConnection
from ._types import CommandResult, SandboxInfo

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
RECEIVE_BUFFER = 256 * 1024
MESSAGE_QUEUE = 16
REST_TIMEOUT = 60.0


class AsyncSandbox:
    """A sandbox, created on first use and destroyed when the `async with` block ends.

    async with AsyncSandbox(api_key="...") as sandbox:
        await sandbox.write_file("hello.py", "print('hi')")
        result = await sandbox.run_command("python3", ["hello.py"])
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        sandbox_id: str | None = None,
        template: str | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        resources: dict[str, float | int | str] | None = None,
    ) -> None:
        """With `sandbox_id`, this object uses an existing sandbox instead of making one (and
        does not destroy it on exit). The other options apply when it makes one: `timeout` is
        its lifetime and `idle_timeout` how long it may go unused, both in seconds;
        `resources` its limits, e.g. `{"cpu": 0.5, "memory": "512m", "pids": 256}`."""
        self._api_key, self.base_url = resolve(api_key, base_url)
        self.sandbox_id: str | None = sandbox_id
        self._owned = sandbox_id is None
        self._options: dict[str, Any] = {
            k: v
            for k, v in {
                "template": template,
                "timeout": timeout,
                "idleTimeout": idle_timeout,
                "metadata": metadata,
                "env": env,
                "resources": resources,
            }.items()
            if v is not None
        }
        self.agent_url: str | None = None
        if sandbox_id is not None:
            ws_base = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            self.agent_url = f"{ws_base}/agent/{sandbox_id}"
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None
        self._rpc: RPCConnection | None = None
        self._ws_scope: trio.CancelScope | None = None
        self._lock = trio.Lock()
        self._destroyed = False
        self.commands = Commands(self)
        self.files = Files(self)
        self.pty = Pty(self)

    async def __aenter__(self) -> AsyncSandbox:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=self.base_url,
                    headers={"X-API-Key": self._api_key},
                    timeout=REST_TIMEOUT,
                )
            )
            self._nursery = await stack.enter_async_context(trio.open_nursery())
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            with trio.CancelScope(shield=True):
                if self.sandbox_id is not None and self._owned and not self._destroyed:
                    try:
                        await self.destroy()
                    except InsienError:
                        if exc is None:
                            raise
        finally:
            self._close_connection()
            stack, self._stack = self._stack, None
            if stack is not None:
                try:
                    await stack.__aexit__(exc_type, exc, tb)
                except BaseExceptionGroup as group:
                    # The connection's nursery wraps whatever left the `async with` body; give
                    # the caller their own exception back when it is the only one.
                    if exc is None or group.exceptions != (exc,):
                        raise

    # -- plumbing -----------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._http is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return await _request(self._http, self.base_url, method, path, body)

    @classmethod
    def connect(
        cls, sandbox_id: str, api_key: str | None = None, base_url: str | None = None
    ) -> AsyncSandbox:
        """An object for an existing sandbox (use it with `async with`; it is not destroyed)."""
        return cls(api_key=api_key, base_url=base_url, sandbox_id=sandbox_id)

    @staticmethod
    async def list(
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        state: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> builtins.list[SandboxInfo]:
        """The caller's sandboxes (recently ended ones too), optionally filtered."""
        key, url = resolve(api_key, base_url)
        params: dict[str, str] = {"limit": "200"}
        if state is not None:
            params["state"] = state
        for name, value in (metadata or {}).items():
            params[f"metadata.{name}"] = value
        found: builtins.list[SandboxInfo] = []
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": key}, timeout=REST_TIMEOUT
        ) as client:
            while True:
                page = await _request(client, url, "GET", "/sandboxes", None, params=params)
                found += [SandboxInfo.from_wire(raw) for raw in page["sandboxes"]]
                if not page.get("nextCursor"):
                    return found
                params["cursor"] = str(page["nextCursor"])

    async def info(self) -> SandboxInfo:
        """State, lifetime, metadata and clients of this sandbox."""
        await self.create()
        return SandboxInfo.from_wire(await self._request("GET", f"/sandboxes/{self.sandbox_id}"))

    async def set_timeout(self, seconds: float) -> SandboxInfo:
        """Let the sandbox live `seconds` from now (within the operator's maximum)."""
        await self.create()
        reply = await self._request(
            "POST", f"/sandbox/{self.sandbox_id}/keepalive", {"timeout": seconds}
        )
        return SandboxInfo.from_wire(reply)

    async def pause(self) -> SandboxInfo:
        """Freeze the sandbox: its processes stop, it uses no CPU and never goes idle."""
        await self.create()
        return SandboxInfo.from_wire(
            await self._request("POST", f"/sandbox/{self.sandbox_id}/pause")
        )

    async def resume(self) -> SandboxInfo:
        await self.create()
        return SandboxInfo.from_wire(
            await self._request("POST", f"/sandbox/{self.sandbox_id}/resume")
        )

    async def snapshot(self) -> str:
        """Save the sandbox's files as a template; pass it as `template=` to make copies."""
        await self.create()
        reply = await self._request("POST", f"/sandbox/{self.sandbox_id}/snapshot")
        return str(reply["template"])

    async def keepalive(self) -> SandboxInfo:
        """Extend the sandbox's life by its own timeout, from now."""
        await self.create()
        return SandboxInfo.from_wire(
            await self._request("POST", f"/sandbox/{self.sandbox_id}/keepalive")
        )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._http

    def _nursery_or_raise(self) -> trio.Nursery:
        if self._nursery is None:
            raise InsienError("use AsyncSandbox inside `async with`")
        return self._nursery

    async def _connection(self) -> RPCConnection:
        """The sandbox's WebSocket, creating the sandbox first if this is the first use."""
        async with self._lock:
            if self._destroyed:
                raise InsienError("this sandbox has been destroyed")
            if self._rpc is None:
                if self.sandbox_id is None:
                    await self.create()
                assert self._nursery is not None
                assert self.agent_url is not None
                self._rpc = await self._nursery.start(self._hold_connection, self.agent_url)
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
                extra_headers=[(b"X-API-Key", self._api_key.encode())],
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

    def _close_connection(self) -> None:
        if self._ws_scope is not None:
            self._ws_scope.cancel()
        self._rpc = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def create(self) -> str:
        """Create the sandbox now (otherwise the first call does). Returns its id."""
        if self.sandbox_id is None:
            body = await self._request("POST", "/sandbox/create", self._options or None)
            self.sandbox_id = str(body["sandboxId"])
            self.agent_url = str(body["agentUrl"])
        return self.sandbox_id

    async def status(self) -> dict[str, Any]:
        """The seed's status: `{"sandboxId", "connected", "createdAt"}`."""
        await self.create()
        return await self._request("GET", f"/sandbox/{self.sandbox_id}/status")

    async def destroy(self) -> None:
        """Destroy the sandbox and its container. Calling it twice is harmless."""
        if self.sandbox_id is None or self._destroyed:
            self._destroyed = True
            return
        self._destroyed = True
        self._close_connection()
        # A sandbox already destroyed elsewhere is the outcome the caller asked for.
        with suppress(NotFoundError):
            await self._request("POST", f"/sandbox/{self.sandbox_id}/destroy")

    async def ping(self) -> float:
        """Round-trip an RPC to the agent; returns the agent's clock."""
        reply = await (await self._connection()).call({"type": "ping"})
        return float(reply["time"])

    # -- the seed's operations, kept as thin aliases ------------------------------------------

    async def run_command(
        self,
        cmd: str,
        args: builtins.list[str] | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        """Run `cmd` with `args` (no shell) and wait for it: the seed's `runCommand`."""
        return await self.commands.run(cmd, list(args or []), cwd=cwd, env=env)

    async def write_file(self, path: str, content: str | bytes) -> None:
        """The seed's `writeFile`: `files.write`."""
        await self.files.write(path, content)

    async def get_file(self, path: str) -> str:
        """The seed's `getFile`: a text file's content. Binary files raise BAD_ENCODING."""
        return await self.files.read(path)

    async def get_file_bytes(self, path: str) -> bytes:
        """A file's exact bytes."""
        return await self.files.read(path, format="bytes")


async def _request(
    client: httpx.AsyncClient,
    base_url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    try:
        response = await client.request(method, path, json=body, params=params)
    except httpx.TransportError as exc:
        raise ConnectError(f"cannot reach Insien at {base_url}: {exc}") from exc
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {}
    if response.is_error:
        code = answer.get("code", "HTTP_ERROR") if isinstance(answer, dict) else "HTTP_ERROR"
        message = answer.get("message", response.text) if isinstance(answer, dict) else ""
        retry_after = response.headers.get("Retry-After", "")
        raise api_error(
            response.status_code,
            str(code),
            str(message),
            retry_after=float(retry_after) if retry_after.isdigit() else None,
        )
    if not isinstance(answer, dict):
        raise InsienError(f"unexpected response from {path}: {response.text[:200]}")
    return answer
