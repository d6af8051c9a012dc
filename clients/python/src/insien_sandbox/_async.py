"""AsyncSandbox: the async SDK, for asyncio and trio alike (anyio). `Sandbox` wraps it."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import httpx

from ._code import Code, CodeContext, Execution
from ._commands import Commands, OutputCallback, Pty
from ._config import resolve
from ._errors import InsienError
from ._files import Files
from ._network import Network, network_body
from ._ports import Ports
from ._rpc import RECONNECT_WINDOW
from ._secrets import SecretBinding
from ._session import REST_TIMEOUT, Session, rest_request
from ._types import CommandResult, LogLine, SandboxInfo, SandboxMetrics
from ._volumes import VolumeMount, mounts_body


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
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
        allow_public_traffic: bool | None = None,
        volumes: Sequence[VolumeMount | dict[str, Any]] | None = None,
        secrets: Sequence[SecretBinding | dict[str, Any]] | None = None,
        reconnect_window: float = RECONNECT_WINDOW,
    ) -> None:
        """With `sandbox_id`, this object uses an existing sandbox instead of making one (and
        does not destroy it on exit). The other options apply when it makes one: `timeout` is
        its lifetime and `idle_timeout` how long it may go unused, both in seconds;
        `resources` its limits, e.g. `{"cpu": 0.5, "memory": "512m", "pids": 256}`;
        `allow_out`/`deny_out` where it may connect out (through the server's proxy: see
        `network`) and `allow_public_traffic` whether its ports need no key; `volumes` your
        volumes to mount (`VolumeMount("data", "/data")`, see `AsyncVolume`); `secrets` your
        secrets its egress proxy adds on the way out (`SecretBinding`, see `AsyncSecrets`).
        `reconnect_window`: how long a lost connection is retried (a server restart) before
        waiting calls fail with SandboxClosedError."""
        key, url = resolve(api_key, base_url)
        options: dict[str, Any] = {
            k: v
            for k, v in {
                "template": template,
                "timeout": timeout,
                "idleTimeout": idle_timeout,
                "metadata": metadata,
                "env": env,
                "resources": resources,
                "network": network_body(allow_out, deny_out, allow_public_traffic, secrets) or None,
                "volumes": mounts_body(volumes) or None,
            }.items()
            if v is not None
        }
        self._session = Session(key, url, options, sandbox_id, reconnect_window)
        self._stack: AsyncExitStack | None = None
        self.commands = Commands(self._session)
        self.files = Files(self._session)
        self.pty = Pty(self._session, self.commands)
        self.ports = Ports(self._session)
        self.network = Network(self._session)
        self._code = Code(self._session)

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox's id; None until it is created (on first use, or by `create()`)."""
        return self._session.sandbox_id

    @property
    def agent_url(self) -> str | None:
        """The sandbox's WebSocket URL, with a token, once it exists."""
        return self._session.agent_url

    @property
    def base_url(self) -> str:
        return self._session.base_url

    async def __aenter__(self) -> AsyncSandbox:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._session.open(stack)
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
            with anyio.CancelScope(shield=True):
                session = self._session
                if session.sandbox_id is not None and session.owned and not session.destroyed:
                    try:
                        await self.destroy()
                    except InsienError:
                        if exc is None:
                            raise
        finally:
            self._session.close_connection()
            stack, self._stack = self._stack, None
            if stack is not None:
                try:
                    await stack.__aexit__(exc_type, exc, tb)
                except BaseExceptionGroup as group:
                    # The connection's task group wraps whatever left the `async with` body; give
                    # the caller their own exception back when it is the only one.
                    if exc is None or group.exceptions != (exc,):
                        raise

    # -- plumbing -----------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._session.request(method, path, body)

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
                page = await rest_request(client, url, "GET", "/sandboxes", params=params)
                found += [SandboxInfo.from_wire(raw) for raw in page["sandboxes"]]
                if not page.get("nextCursor"):
                    return found
                params["cursor"] = str(page["nextCursor"])

    async def info(self) -> SandboxInfo:
        """State, lifetime, metadata and clients of this sandbox."""
        await self.create()
        return SandboxInfo.from_wire(await self._request("GET", f"/sandboxes/{self.sandbox_id}"))

    # -- code contexts (docs/protocol.md, "Code contexts") ------------------------------------

    async def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | CodeContext | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: OutputCallback | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the sandbox interrupts the cell)
        envs: dict[str, str] | None = None,
    ) -> Execution:
        """Run a cell in a code context (the language's default one unless `context`), where
        variables and imports persist between calls. Output streams to the callbacks as it
        comes; `timeout` interrupts the cell (KeyboardInterrupt) and keeps the context."""
        return await self._code.run(
            code,
            language=language,
            context=context,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_result=on_result,
            timeout=timeout,
            envs=envs,
        )

    async def create_code_context(
        self, *, language: str = "python", cwd: str | None = None
    ) -> CodeContext:
        """A new context that shares nothing with the others."""
        return await self._code.create_context(language=language, cwd=cwd)

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        return await self._code.list_contexts()

    async def restart_code_context(self, context: str | CodeContext) -> CodeContext:
        """Start a context again, empty (also how a context whose process died comes back)."""
        return await self._code.restart_context(context)

    async def remove_code_context(self, context: str | CodeContext) -> None:
        await self._code.remove_context(context)

    async def interrupt_code(self, context: str | CodeContext = "python") -> None:
        """Ctrl-C for the cell running in `context` (default: Python's default context)."""
        await self._code.interrupt(context)

    async def metrics(self) -> SandboxMetrics:
        """CPU, memory, disk and processes of the sandbox now (reading it is not activity)."""
        await self.create()
        raw = await self._request("GET", f"/sandboxes/{self.sandbox_id}/metrics")
        return SandboxMetrics.from_wire(raw)

    async def logs(self) -> builtins.list[LogLine]:
        """The agent's own log: its last 200 stderr lines (kept after the sandbox ends)."""
        await self.create()
        raw = await self._request("GET", f"/sandboxes/{self.sandbox_id}/logs")
        return [LogLine(str(entry["timestamp"]), str(entry["line"])) for entry in raw["logs"]]

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

    # -- lifecycle ----------------------------------------------------------------------------

    def keep(self) -> None:
        """Leave the sandbox running when this object closes: it then ends by its own timeout,
        or by `destroy()` from anywhere (`insien sandbox create` does this)."""
        self._session.owned = False

    async def create(self) -> str:
        """Create the sandbox now (otherwise the first call does). Returns its id."""
        return await self._session.create()

    async def status(self) -> dict[str, Any]:
        """The original Node.js SDK's status: `{"sandboxId", "connected", "createdAt"}`."""
        await self.create()
        return await self._request("GET", f"/sandbox/{self.sandbox_id}/status")

    async def destroy(self) -> None:
        """Destroy the sandbox and its container. Calling it twice is harmless."""
        await self._session.destroy()

    async def ping(self) -> float:
        """Round-trip an RPC to the agent; returns the agent's clock."""
        reply = await (await self._session.connection()).call({"type": "ping"})
        return float(reply["time"])

    # -- the original Node.js SDK's operations, kept as thin aliases -------------------------

    async def run_command(
        self,
        cmd: str,
        args: builtins.list[str] | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        """Run `cmd` with `args` (no shell) and wait for it: the original Node.js SDK's
        `runCommand`."""
        return await self.commands.run(cmd, list(args or []), cwd=cwd, env=env)

    async def write_file(self, path: str, content: str | bytes) -> None:
        """The original Node.js SDK's `writeFile`: `files.write`."""
        await self.files.write(path, content)

    async def get_file(self, path: str) -> str:
        """The original Node.js SDK's `getFile`: a text file's content. Binary files raise
        BAD_ENCODING."""
        return await self.files.read(path)

    async def get_file_bytes(self, path: str) -> bytes:
        """A file's exact bytes."""
        return await self.files.read(path, format="bytes")
