"""The MCP server (`insien mcp`): sandbox tools for AI agents, on the official `mcp` package.

Tools answer with structured results; a failure is a tool error whose message says what went
wrong and what to do next (an agent reads it). Sandboxes an MCP session creates are its own:
`list_sandboxes` shows them, and they are destroyed when the session ends (stdio: the process;
streamable HTTP: the server's stop) unless created with `keep=true`. Over streamable HTTP every
request must carry the server's bearer token: the tools act with the operator's key, which any
other local process could otherwise use through them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from .._async import AsyncSandbox
from .._errors import (
    APIError,
    AuthenticationError,
    ConnectError,
    InsienError,
    NotFoundError,
    RateLimitError,
    RPCError,
    SandboxClosedError,
)
from .._secrets import AsyncSecrets, SecretBinding
from .._volumes import AsyncVolume, VolumeMount

DEFAULT_IDLE_TIMEOUT = 1800.0
"""Sandboxes made over MCP end after this long unused, so an abandoned session leaks nothing."""
MAX_TEXT = 256 * 1024
"""Characters of output or file content handed to the model per answer (the rest is cut)."""


@dataclass
class Held:
    """A sandbox this server has open, held by its own task until `done` is set: destroyed
    then unless kept or not made here."""

    box: AsyncSandbox
    owned: bool
    session: str
    done: anyio.Event


MAX_BORROWED = 32
"""Sandboxes made elsewhere that the server keeps a connection to; past it, the least recently
used one is let go (it goes on running; a later call connects again)."""


@dataclass
class Registry:
    """The server's open sandboxes, by id. Each is held open by a task in the lifespan's task
    group (an AsyncSandbox is entered and left in one task; tool calls come from many)."""

    api_key: str | None
    base_url: str | None
    tasks: TaskGroup
    held: dict[str, Held] = field(default_factory=dict)

    async def _open(self, box: AsyncSandbox) -> anyio.Event:
        done = anyio.Event()

        async def hold(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            async with box:
                task_status.started()
                await done.wait()

        await self.tasks.start(hold)
        return done

    async def create(self, session: str, options: dict[str, Any], keep: bool) -> AsyncSandbox:
        box = AsyncSandbox(api_key=self.api_key, base_url=self.base_url, **options)
        if keep:
            box.keep()
        done = await self._open(box)
        try:
            sandbox_id = await box.create()
        except BaseException:
            done.set()
            raise
        self.held[sandbox_id] = Held(box, owned=not keep, session=session, done=done)
        return box

    async def get(self, sandbox_id: str, session: str) -> AsyncSandbox:
        held = self.held.pop(sandbox_id, None)
        if held is not None:
            self.held[sandbox_id] = held  # the most recently used, last
        else:
            box = AsyncSandbox.connect(sandbox_id, api_key=self.api_key, base_url=self.base_url)
            done = await self._open(box)
            try:
                await box.info()  # a clear NotFound now rather than on first use
            except BaseException:
                done.set()
                raise
            held = self.held[sandbox_id] = Held(box, owned=False, session=session, done=done)
            self.trim()
        return held.box

    def trim(self) -> None:
        """Let go of the least recently used borrowed sandboxes past MAX_BORROWED."""
        borrowed = [sandbox_id for sandbox_id, held in self.held.items() if not held.owned]
        for sandbox_id in borrowed[: max(0, len(borrowed) - MAX_BORROWED)]:
            self.release(sandbox_id)

    def release(self, sandbox_id: str) -> None:
        held = self.held.pop(sandbox_id, None)
        if held is not None:
            held.done.set()

    def release_all(self) -> None:
        for sandbox_id in list(self.held):
            self.release(sandbox_id)


def _session(ctx: Context) -> str:
    """Which MCP session a call belongs to: the streamable-HTTP session id, or the one stdio
    session this process serves."""
    headers = ctx.headers or {}
    return str(headers.get("mcp-session-id") or "stdio")


def _registry(ctx: Context) -> Registry:
    registry = ctx.request_context.lifespan_context
    assert isinstance(registry, Registry)
    return registry


def _tool_error(exc: InsienError, sandbox_id: str | None = None) -> ToolError:
    """An SDK error as a message an agent can act on."""
    if isinstance(exc, NotFoundError):
        return ToolError(
            f"sandbox {sandbox_id} does not exist or has ended; make one with create_sandbox"
        )
    if isinstance(exc, AuthenticationError):
        return ToolError("the Insien API key was refused; the server's operator must fix it")
    if isinstance(exc, RateLimitError):
        wait = f" retry in {exc.retry_after:g}s" if exc.retry_after else " retry later"
        return ToolError(f"over the sandbox quota ({exc.message});{wait} or destroy a sandbox")
    if isinstance(exc, APIError):
        return ToolError(f"Insien refused ({exc.status} {exc.code}): {exc.message}")
    if isinstance(exc, RPCError):
        return ToolError(f"{exc.code}: {exc.message}")
    if isinstance(exc, SandboxClosedError):
        return ToolError(f"the sandbox's connection ended ({exc}); it may have been destroyed")
    if isinstance(exc, ConnectError):
        return ToolError(f"cannot reach the Insien server: {exc}")
    return ToolError(str(exc))


def _volume_error(exc: InsienError, name: str) -> ToolError:
    """An SDK error about a volume as a message an agent can act on."""
    if isinstance(exc, NotFoundError):
        return ToolError(f"volume {name}: {exc.message}; list_volumes shows yours")
    if isinstance(exc, APIError) and exc.status == 507:
        return ToolError(f"volume {name} is full ({exc.message}); remove files or use another")
    return _tool_error(exc)


class MountSpec(BaseModel):
    """One of your volumes, mounted into a new sandbox."""

    name: str
    path: Annotated[str, Field(description="Absolute, e.g. /data (not /tmp or a system folder)")]
    read_only: bool = False


class BindingSpec(BaseModel):
    """One of your secrets, added by the egress proxy to the sandbox's requests to `hosts`
    (the sandbox never holds it: it sees a placeholder in $INSIEN_SECRET_<NAME>)."""

    secret: Annotated[str, Field(description="The secret's name (list_secrets)")]
    hosts: Annotated[
        list[str],
        Field(min_length=1, description="e.g. api.openai.com, *.example.com, host:port"),
    ]
    header: Annotated[
        str | None,
        Field(description="A header to set, e.g. 'Authorization: Bearer {secret}'"),
    ] = None
    methods: list[str] = []
    paths: Annotated[list[str], Field(description="Path prefixes it is limited to")] = []
    body: Annotated[
        bool, Field(description="Swap the placeholder in request bodies too (up to 1 MiB)")
    ] = False

    def binding(self) -> SecretBinding:
        return SecretBinding(
            self.secret,
            tuple(self.hosts),
            self.header,
            tuple(self.methods),
            tuple(self.paths),
            self.body,
        )


def _with_hosts(allow_out: list[str], bindings: list[SecretBinding]) -> list[str]:
    """`allow_out` plus every bound host it does not list (a binding needs its hosts
    allowed)."""
    ways_out = list(allow_out)
    for binding in bindings:
        ways_out += [host for host in binding.hosts if host not in ways_out]
    return ways_out


def _bound(bindings: list[SecretBinding]) -> list[dict[str, Any]]:
    """What an agent is told of bindings: where each secret goes and its placeholder's
    variable (the value is never anywhere the MCP server could answer it)."""
    return [
        {
            "secret": b.secret,
            "hosts": list(b.hosts),
            "header": b.header,
            "variable": f"INSIEN_SECRET_{b.secret.upper()}",
        }
        for b in bindings
    ]


def _cut(text: str) -> tuple[str, bool]:
    return (text[:MAX_TEXT], True) if len(text) > MAX_TEXT else (text, False)


def build_server(api_key: str | None, base_url: str | None) -> MCPServer[Registry]:
    """The MCP server with its tools, for the Insien server at `base_url`."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[Registry]) -> AsyncIterator[Registry]:
        async with anyio.create_task_group() as tasks:
            registry = Registry(api_key, base_url, tasks)
            try:
                yield registry
            finally:
                registry.release_all()  # each holder leaves its sandbox: destroyed if ours

    server: MCPServer[Registry] = MCPServer(
        name="insien",
        version=__version__,
        instructions=(
            "Insien runs code in isolated Linux sandboxes. create_sandbox first, then "
            "run_command, write_file, read_file and list_files with its sandbox_id; "
            "get_preview_url shows a web app running in it; destroy_sandbox when done (this "
            "session's sandboxes are destroyed when it ends). list_secrets and bind_secret "
            "give a sandbox API credentials it never holds: the egress proxy adds them."
        ),
        lifespan=lifespan,
    )

    @server.tool()
    async def create_sandbox(
        ctx: Context,
        template: Annotated[
            str | None, Field(description="Image or template; default: the server's")
        ] = None,
        timeout_seconds: Annotated[
            float | None, Field(gt=0, description="Lifetime; default: the server's")
        ] = None,
        metadata: Annotated[
            dict[str, str] | None, Field(description="Labels to find it by")
        ] = None,
        keep: Annotated[bool, Field(description="Keep it after this MCP session ends")] = False,
        volumes: Annotated[
            list[MountSpec] | None, Field(description="Your volumes to mount (create_volume)")
        ] = None,
        allow_out: Annotated[
            list[str] | None,
            Field(description="Hosts it may connect out to; default: none (no network)"),
        ] = None,
        secrets: Annotated[
            list[BindingSpec] | None,
            Field(
                description="Your secrets (list_secrets) the proxy adds to requests to some "
                "hosts, which are allowed out too; code inside sees only placeholders"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Create a new isolated Linux sandbox (Debian, python3, node); returns its sandbox_id."""
        options: dict[str, Any] = {"template": template, "timeout": timeout_seconds}
        options["metadata"] = metadata
        if volumes:
            options["volumes"] = [VolumeMount(v.name, v.path, v.read_only) for v in volumes]
        bindings = [spec.binding() for spec in secrets or ()]
        if allow_out or bindings:
            options["allow_out"] = _with_hosts(allow_out or [], bindings)
            options["secrets"] = bindings
        options["idle_timeout"] = DEFAULT_IDLE_TIMEOUT
        try:
            box = await _registry(ctx).create(_session(ctx), options, keep)
            info = await box.info()
        except InsienError as exc:
            raise _tool_error(exc) from exc
        return {"sandbox_id": info.sandbox_id, "state": info.state, "expires_at": info.expires_at}

    @server.tool()
    async def run_command(
        ctx: Context,
        sandbox_id: str,
        command: Annotated[
            str, Field(min_length=1, description="A shell command line (/bin/sh -c)")
        ],
        cwd: Annotated[
            str | None, Field(description="Working folder; default: the home folder")
        ] = None,
        timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run a shell command in the sandbox and wait for it; returns stdout, stderr and the
        exit code (timed_out is true if it was killed by the timeout)."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            result = await box.commands.run(command, cwd=cwd, env=env, timeout=timeout_seconds)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        stdout, cut_out = _cut(result.stdout)
        stderr, cut_err = _cut(result.stderr)
        return {
            "exit_code": result.exit_code,
            "stdout": stdout,
            "stderr": stderr,
            "timed_out": result.timed_out,
            "truncated": result.truncated or cut_out or cut_err,
        }

    @server.tool()
    async def run_code(
        ctx: Context,
        sandbox_id: str,
        code: Annotated[str, Field(description="Python source, run like a notebook cell")],
        context_id: Annotated[
            str | None, Field(description="A context from an earlier call; default: the shared one")
        ] = None,
        timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60,
    ) -> dict[str, Any]:
        """Run Python in the sandbox like a notebook cell: variables, imports and functions
        stay for the next call. Returns the last expression's value (`text`, plus `html` when
        the object has one), stdout, stderr, and the error with its traceback if it raised."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            execution = await box.run_code(code, context=context_id, timeout=timeout_seconds)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        stdout, cut_out = _cut("".join(execution.logs.stdout))
        stderr, cut_err = _cut("".join(execution.logs.stderr))
        main = next((r for r in execution.results if r.is_main_result), None)
        error = execution.error
        return {
            "text": main.text if main is not None else None,
            "html": _cut(main.html)[0] if main is not None and main.html else None,
            "stdout": stdout,
            "stderr": stderr,
            "error": None
            if error is None
            else {"name": error.name, "value": error.value, "traceback": _cut(error.traceback)[0]},
            "timed_out": execution.timed_out,
            "truncated": execution.truncated or cut_out or cut_err,
        }

    @server.tool()
    async def write_file(ctx: Context, sandbox_id: str, path: str, content: str) -> dict[str, Any]:
        """Write a text file in the sandbox (parent folders are made); relative paths start in
        the home folder."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            await box.files.write(path, content)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        return {"path": path, "bytes": len(content.encode())}

    @server.tool()
    async def read_file(ctx: Context, sandbox_id: str, path: str) -> dict[str, Any]:
        """Read a text file from the sandbox."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            content = await box.files.read(path)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        text, cut = _cut(content)
        return {"path": path, "content": text, "truncated": cut}

    @server.tool()
    async def list_files(
        ctx: Context,
        sandbox_id: str,
        path: str = ".",
        depth: Annotated[int, Field(ge=1, le=10)] = 1,
    ) -> dict[str, Any]:
        """List a folder in the sandbox (depth > 1 goes into subfolders)."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            entries = await box.files.list(path, depth=depth)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        return {
            "path": path,
            "entries": [
                {"name": e.name, "path": e.path, "type": e.type, "size": e.size} for e in entries
            ],
        }

    def volume(name: str) -> AsyncVolume:
        return AsyncVolume(name, api_key=api_key, base_url=base_url)

    @server.tool()
    async def create_volume(
        name: Annotated[str, Field(description="Letters, digits, . _ -; up to 63")],
        size_limit: Annotated[
            str | None, Field(description="e.g. 512m, 2g; default: the server's (1g)")
        ] = None,
    ) -> dict[str, Any]:
        """Create a volume: storage that outlives sandboxes and that several sandboxes can
        mount (create_sandbox's `volumes`). It is kept until delete_volume."""
        try:
            made = await AsyncVolume.create(name, size_limit, api_key=api_key, base_url=base_url)
            info = await made.info()
        except InsienError as exc:
            raise _volume_error(exc, name) from exc
        return {"name": info.name, "size_limit": info.size_limit, "bytes_used": info.bytes_used}

    @server.tool()
    async def list_volumes() -> dict[str, Any]:
        """Your volumes."""
        try:
            found = await AsyncVolume.list(api_key, base_url)
        except InsienError as exc:
            raise _tool_error(exc) from exc
        return {"volumes": [{"name": v.name, "size_limit": v.size_limit} for v in found]}

    @server.tool()
    async def delete_volume(
        name: str,
        force: Annotated[
            bool, Field(description="Destroy the sandboxes that mount it first")
        ] = False,
    ) -> dict[str, Any]:
        """Delete a volume and every file in it (refused while a sandbox mounts it)."""
        try:
            await volume(name).delete(force=force)
        except InsienError as exc:
            raise _volume_error(exc, name) from exc
        return {"name": name, "deleted": True}

    @server.tool()
    async def write_volume_file(name: str, path: str, content: str) -> dict[str, Any]:
        """Write a text file into a volume without a sandbox (parent folders are made)."""
        try:
            written = await volume(name).write(path, content)
        except InsienError as exc:
            raise _volume_error(exc, name) from exc
        return {"path": written.path, "bytes": written.bytes, "sha256": written.sha256}

    @server.tool()
    async def read_volume_file(name: str, path: str) -> dict[str, Any]:
        """Read a text file from a volume without a sandbox."""
        try:
            data = await volume(name).read(path)
        except InsienError as exc:
            raise _volume_error(exc, name) from exc
        text, cut = _cut(data.decode("utf-8", "replace"))
        return {"path": path, "content": text, "truncated": cut}

    @server.tool()
    async def list_volume_files(name: str, path: str = "/") -> dict[str, Any]:
        """List a folder of a volume without a sandbox."""
        try:
            entries = await volume(name).list_files(path)
        except InsienError as exc:
            raise _volume_error(exc, name) from exc
        return {
            "path": path,
            "entries": [{"name": e.name, "type": e.type, "size": e.size} for e in entries],
        }

    @server.tool()
    async def list_secrets() -> dict[str, Any]:
        """Your secrets' names and descriptions, to bind to a sandbox (create_sandbox's
        `secrets`, or bind_secret). No tool reads a secret's value: the egress proxy adds
        it to the sandbox's requests on the way out."""
        try:
            found = await AsyncSecrets(api_key, base_url).list()
        except InsienError as exc:
            raise _tool_error(exc) from exc
        return {
            "secrets": [
                {"name": s.name, "description": s.description, "version": s.version} for s in found
            ]
        }

    @server.tool()
    async def bind_secret(ctx: Context, sandbox_id: str, binding: BindingSpec) -> dict[str, Any]:
        """Bind one of your secrets to a running sandbox's requests to some hosts (allowed
        out from now on too); its rules and other secrets' bindings stay (this secret's is
        replaced). Commands started after
        this see $INSIEN_SECRET_<NAME>, a placeholder the proxy swaps for the value (and it
        sets `header`, if given) on requests to those hosts only."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            policy = (await box.network.get()).policy
            kept = [b for b in policy.secrets if b.secret != binding.secret]
            bindings = [*kept, binding.binding()]
            updated = await box.network.update(
                allow_out=_with_hosts(policy.allow_out, bindings),
                deny_out=policy.deny_out,
                allow_public_traffic=policy.allow_public_traffic,
                secrets=bindings,
            )
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        return {
            "allow_out": updated.policy.allow_out,
            "secrets": _bound(updated.policy.secrets),
        }

    @server.tool()
    async def get_preview_url(
        ctx: Context,
        sandbox_id: str,
        port: Annotated[int, Field(ge=1, le=65535, description="Where the app listens")],
        expires_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600,
    ) -> dict[str, Any]:
        """A URL that opens the web app listening on `port` in the sandbox (on 127.0.0.1 or
        0.0.0.0), for a person or a browser, without a key, until it expires."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            url = await box.ports.url(port, expires=expires_seconds)
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        return {"url": url, "port": port, "expires_seconds": expires_seconds}

    @server.tool()
    async def list_sandboxes(ctx: Context) -> dict[str, Any]:
        """The sandboxes this MCP session created and still holds (not the kept ones)."""
        registry = _registry(ctx)
        mine = [
            sandbox_id
            for sandbox_id, held in registry.held.items()
            if held.session == _session(ctx) and held.owned
        ]
        return {"sandbox_ids": mine}

    @server.tool()
    async def destroy_sandbox(ctx: Context, sandbox_id: str) -> dict[str, Any]:
        """Destroy a sandbox and everything in it."""
        try:
            box = await _registry(ctx).get(sandbox_id, _session(ctx))
            await box.destroy()
        except InsienError as exc:
            raise _tool_error(exc, sandbox_id) from exc
        _registry(ctx).release(sandbox_id)
        return {"destroyed": sandbox_id}

    return server


class BearerGate:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <token>` (this server's
    token) is refused with 401 before the MCP app sees it; lifespan events pass through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def allows(self, scope: Scope) -> bool:
        given = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        scheme, _, credentials = given.strip().partition(b" ")
        # compare_digest: how long the comparison takes says nothing about the token
        matches = hmac.compare_digest(credentials.strip(), self.token)
        return scheme.lower() == b"bearer" and matches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {"error": "unauthorized", "message": "send Authorization: Bearer <token>"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="insien-mcp"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine (a name other than
    localhost might resolve anywhere, so it does not count)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve_http(server: MCPServer[Registry], host: str, port: int, token: str) -> None:
    """Streamable HTTP at `/mcp`, as `MCPServer.run("streamable-http")` serves it, behind the
    bearer token."""
    import uvicorn

    app = BearerGate(server.streamable_http_app(host=host), token)
    level = server.settings.log_level.lower()
    await uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=level)).serve()
