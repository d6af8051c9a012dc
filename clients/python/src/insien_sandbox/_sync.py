"""Sandbox: the blocking SDK. An AsyncSandbox runs on an event loop in a helper thread.

Long because it mirrors every public method of the async SDK, one thin wrapper each
(tests/unit/test_sdk_parity.py keeps the two in step); splitting it would scatter the mirror.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, BinaryIO, Literal, TypeVar, overload

import anyio
import anyio.from_thread
from anyio.lowlevel import EventLoopToken, current_token

from ._async import AsyncSandbox
from ._code import CodeContext, Execution
from ._commands import CommandHandle as AsyncCommandHandle
from ._commands import Commands as AsyncCommands
from ._commands import OutputCallback
from ._commands import Pty as AsyncPty
from ._files import Files as AsyncFiles
from ._files import Progress
from ._network import Network as AsyncNetwork
from ._ports import Forward as AsyncForward
from ._ports import Ports as AsyncPorts
from ._rpc import RECONNECT_WINDOW
from ._secrets import SecretBinding
from ._types import (
    CommandResult,
    EntryInfo,
    FilesystemEvent,
    LogLine,
    NetworkInfo,
    OutputChunk,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
)
from ._volumes import VolumeMount
from ._watch import WatchHandle as AsyncWatchHandle

T = TypeVar("T")

LOOP_BACKEND = "asyncio"
"""The helper thread's loop: the standard library's, so the blocking SDK needs no other."""


def _run_in_own_thread(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a one-off coroutine on a fresh loop in a short-lived thread: the calling thread may
    already run a loop (Jupyter), where starting another would fail."""
    with ThreadPoolExecutor(1, thread_name_prefix="insien-sandbox") as pool:
        return pool.submit(partial(anyio.run, fn, backend=LOOP_BACKEND)).result()


class _LoopThread:
    """An event loop in a daemon thread that owns one AsyncSandbox for its whole life.

    Being its own thread's loop, it works from any thread and beside a loop the caller already
    runs (Jupyter, an asyncio service); a daemon, so a Sandbox never closed cannot hold the
    interpreter open at exit."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox
        self._ready = threading.Event()
        self._token: EventLoopToken | None = None
        self._stop: anyio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="insien-sandbox", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend=LOOP_BACKEND)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with self._sandbox:
            self._token = current_token()
            self._stop = anyio.Event()
            self._ready.set()
            await self._stop.wait()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("this Sandbox is closed")

        async def call() -> T:
            return await fn(*args)

        return anyio.from_thread.run(call, token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            anyio.from_thread.run_sync(self._stop.set, token=self._token)
        self._thread.join()
        if self._error is not None:
            raise self._error


class CommandHandle:
    """Blocking view of a background process; iterate it for its output chunks."""

    def __init__(self, loop: _LoopThread, handle: AsyncCommandHandle) -> None:
        self._loop = loop
        self._handle = handle
        self._chunks = handle.__aiter__()

    @property
    def pid(self) -> int:
        return self._handle.pid

    def __iter__(self) -> Iterator[OutputChunk]:
        return self

    def __next__(self) -> OutputChunk:
        try:
            return self._loop.run(self._chunks.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def exited(self) -> bool:
        """Whether the process has exited (its `exit` event has arrived)."""
        return self._handle.exited

    def wait(self) -> CommandResult:
        return self._loop.run(self._handle.wait)

    def kill(self, signal: str | int = "SIGKILL") -> None:
        self._loop.run(self._handle.kill, signal)

    def send_stdin(self, data: str | bytes, *, eof: bool = False) -> None:
        self._loop.run(partial(self._handle.send_stdin, data, eof=eof))

    def disconnect(self) -> None:
        self._loop.run(self._handle.disconnect)


class Commands:
    """Blocking `sandbox.commands`; callbacks run on the SDK's helper thread."""

    def __init__(self, loop: _LoopThread, commands: AsyncCommands) -> None:
        self._loop = loop
        self._commands = commands

    @overload
    def run(
        self,
        cmd: str,
        args: list[str] | None = ...,
        *,
        background: Literal[False] = ...,
        cwd: str | None = ...,
        env: dict[str, str] | None = ...,
        stdin: str | None = ...,
        timeout: float | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str,
        args: list[str] | None = ...,
        *,
        background: Literal[True],
        cwd: str | None = ...,
        env: dict[str, str] | None = ...,
        stdin: str | None = ...,
        timeout: float | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str,
        args: list[str] | None = None,
        *,
        background: bool = False,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CommandResult | CommandHandle:
        """See AsyncSandbox.commands.run: no `args` means a shell command line."""
        options: dict[str, Any] = {
            "cwd": cwd,
            "env": env,
            "stdin": stdin,
            "timeout": timeout,
            "on_stdout": on_stdout,
            "on_stderr": on_stderr,
        }
        if background:

            async def start() -> AsyncCommandHandle:
                return await self._commands.run(cmd, args, background=True, **options)

            return CommandHandle(self._loop, self._loop.run(start))

        async def run() -> CommandResult:
            return await self._commands.run(cmd, args, background=False, **options)

        return self._loop.run(run)

    def connect(
        self,
        pid: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        replay: bool = True,
        binary: bool = False,
    ) -> CommandHandle:
        handle = self._loop.run(
            partial(
                self._commands.connect,
                pid,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                replay=replay,
                binary=binary,
            )
        )
        return CommandHandle(self._loop, handle)

    def list(self) -> list[ProcessInfo]:
        return self._loop.run(self._commands.list)

    def kill(self, pid: int, signal: str | int = "SIGKILL") -> bool:
        return self._loop.run(self._commands.kill, pid, signal)

    def kill_all(self) -> int:
        """Kill every process of the sandbox user (see the async `Commands.kill_all`)."""
        return self._loop.run(self._commands.kill_all)

    def send_stdin(self, pid: int, data: str | bytes, *, eof: bool = False) -> None:
        self._loop.run(partial(self._commands.send_stdin, pid, data, eof=eof))


class WatchHandle:
    """Blocking view of a running watch; iterate it for its `FilesystemEvent`s."""

    def __init__(self, loop: _LoopThread, handle: AsyncWatchHandle) -> None:
        self._loop = loop
        self._handle = handle
        self._events = handle.__aiter__()

    @property
    def dropped(self) -> int:
        return self._handle.dropped

    @property
    def ended(self) -> str | None:
        return self._handle.ended

    def __iter__(self) -> Iterator[FilesystemEvent]:
        return self

    def __next__(self) -> FilesystemEvent:
        try:
            return self._loop.run(self._events.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def stop(self) -> None:
        self._loop.run(self._handle.stop)


class Files:
    """Blocking `sandbox.files`."""

    def __init__(self, loop: _LoopThread, files: AsyncFiles) -> None:
        self._loop = loop
        self._files = files

    def write(
        self, path: str, data: str | bytes, *, mode: int | None = None, append: bool = False
    ) -> None:
        self._loop.run(partial(self._files.write, path, data, mode=mode, append=append))

    @overload
    def read(
        self,
        path: str,
        *,
        format: Literal["text"] = ...,
        offset: int = ...,
        length: int | None = ...,
    ) -> str: ...

    @overload
    def read(
        self, path: str, *, format: Literal["bytes"], offset: int = ..., length: int | None = ...
    ) -> bytes: ...

    def read(
        self,
        path: str,
        *,
        format: Literal["text", "bytes"] = "text",
        offset: int = 0,
        length: int | None = None,
    ) -> str | bytes:
        if format == "bytes":
            return self._loop.run(
                partial(self._files.read, path, format="bytes", offset=offset, length=length)
            )
        return self._loop.run(
            partial(self._files.read, path, format="text", offset=offset, length=length)
        )

    def list(self, path: str = ".", *, depth: int = 1) -> list[EntryInfo]:
        return self._loop.run(partial(self._files.list, path, depth=depth))

    def stat(self, path: str) -> EntryInfo:
        return self._loop.run(self._files.stat, path)

    def exists(self, path: str) -> bool:
        return self._loop.run(self._files.exists, path)

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        self._loop.run(partial(self._files.mkdir, path, parents=parents))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._loop.run(partial(self._files.remove, path, recursive=recursive))

    def rename(self, path: str, new_path: str) -> None:
        self._loop.run(self._files.rename, path, new_path)

    def watch(self, path: str = ".", *, recursive: bool = False) -> WatchHandle:
        handle = self._loop.run(partial(self._files.watch, path, recursive=recursive))
        return WatchHandle(self._loop, handle)

    def upload(
        self,
        path: str,
        source: bytes | str | os.PathLike[str] | BinaryIO,
        *,
        on_progress: Progress | None = None,
    ) -> int:
        """Stream bytes or a local file into `path`; `on_progress(n)` runs on the SDK's thread."""
        return self._loop.run(partial(self._files.upload, path, source, on_progress=on_progress))

    def download(
        self,
        path: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        on_progress: Progress | None = None,
    ) -> bytes | None:
        if destination is None:
            return self._loop.run(partial(self._files.download, path, on_progress=on_progress))
        self._loop.run(partial(self._files.download, path, destination, on_progress=on_progress))
        return None


class Forward:
    """Blocking view of a port forward (`with sandbox.ports.forward(8000) as f: f.url`)."""

    def __init__(self, loop: _LoopThread, forward: AsyncForward) -> None:
        self._loop = loop
        self._forward = forward

    @property
    def url(self) -> str:
        return self._forward.url

    @property
    def local_port(self) -> int:
        return self._forward.local_port

    def open(self) -> Forward:
        self._loop.run(self._forward.open)
        return self

    def close(self) -> None:
        self._loop.run(self._forward.close)

    def __enter__(self) -> Forward:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Ports:
    """Blocking `sandbox.ports`."""

    def __init__(self, loop: _LoopThread, ports: AsyncPorts) -> None:
        self._loop = loop
        self._ports = ports

    def url(self, port: int, *, expires: float = 3600) -> str:
        """See AsyncSandbox.ports.url."""
        return self._loop.run(partial(self._ports.url, port, expires=expires))

    def forward(self, port: int, *, local_port: int = 0, local_host: str = "127.0.0.1") -> Forward:
        """See AsyncSandbox.ports.forward; the listener runs on the SDK's helper thread."""
        return Forward(
            self._loop, self._ports.forward(port, local_port=local_port, local_host=local_host)
        )


class Network:
    """Blocking `sandbox.network`."""

    def __init__(self, loop: _LoopThread, network: AsyncNetwork) -> None:
        self._loop = loop
        self._network = network

    def get(self) -> NetworkInfo:
        """See AsyncSandbox.network.get."""
        return self._loop.run(self._network.get)

    def update(
        self,
        *,
        allow_out: Sequence[str] = (),
        deny_out: Sequence[str] = (),
        allow_public_traffic: bool = False,
        secrets: Sequence[SecretBinding | dict[str, Any]] = (),
    ) -> NetworkInfo:
        """See AsyncSandbox.network.update."""
        return self._loop.run(
            partial(
                self._network.update,
                allow_out=allow_out,
                deny_out=deny_out,
                allow_public_traffic=allow_public_traffic,
                secrets=secrets,
            )
        )


class Pty:
    """Blocking `sandbox.pty`."""

    def __init__(self, loop: _LoopThread, pty: AsyncPty) -> None:
        self._loop = loop
        self._pty = pty

    def create(
        self,
        *,
        cols: int = 80,
        rows: int = 24,
        cmd: str = "/bin/bash",
        args: list[str] | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        on_data: OutputCallback | None = None,
    ) -> CommandHandle:
        handle = self._loop.run(
            partial(
                self._pty.create,
                cols=cols,
                rows=rows,
                cmd=cmd,
                args=args,
                cwd=cwd,
                env=env,
                on_data=on_data,
            )
        )
        return CommandHandle(self._loop, handle)

    def resize(self, pid: int, *, cols: int, rows: int) -> None:
        self._loop.run(partial(self._pty.resize, pid, cols=cols, rows=rows))

    def send_input(self, pid: int, data: str | bytes) -> None:
        self._loop.run(self._pty.send_input, pid, data)

    def kill(self, pid: int) -> bool:
        return self._loop.run(self._pty.kill, pid)


class Sandbox:
    """A sandbox for blocking code, created on first use, destroyed by `destroy()` or `with`.

    with Sandbox(api_key="...") as sandbox:
        sandbox.files.write("hello.py", "print('hi')")
        print(sandbox.commands.run("python3 hello.py").stdout)
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
        """See AsyncSandbox: with `sandbox_id` an existing sandbox is used (and not destroyed
        on close); otherwise one is made on first use with these options."""
        self._async = AsyncSandbox(
            api_key=api_key,
            base_url=base_url,
            sandbox_id=sandbox_id,
            template=template,
            timeout=timeout,
            idle_timeout=idle_timeout,
            metadata=metadata,
            env=env,
            resources=resources,
            allow_out=allow_out,
            deny_out=deny_out,
            allow_public_traffic=allow_public_traffic,
            volumes=volumes,
            secrets=secrets,
            reconnect_window=reconnect_window,
        )
        self._loop = _LoopThread(self._async)
        self.commands = Commands(self._loop, self._async.commands)
        self.files = Files(self._loop, self._async.files)
        self.pty = Pty(self._loop, self._async.pty)
        self.ports = Ports(self._loop, self._async.ports)
        self.network = Network(self._loop, self._async.network)

    @property
    def sandbox_id(self) -> str | None:
        return self._async.sandbox_id

    @property
    def agent_url(self) -> str | None:
        """The sandbox's WebSocket URL, with a token, once it exists."""
        return self._async.agent_url

    @property
    def base_url(self) -> str:
        return self._async.base_url

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Destroy the sandbox if it was created, and stop the helper thread."""
        self._loop.close()

    @classmethod
    def connect(
        cls, sandbox_id: str, api_key: str | None = None, base_url: str | None = None
    ) -> Sandbox:
        """An existing sandbox, from any process; closing this object does not destroy it."""
        return cls(api_key=api_key, base_url=base_url, sandbox_id=sandbox_id)

    @staticmethod
    def list(
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        state: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> builtins.list[SandboxInfo]:
        async def fetch() -> builtins.list[SandboxInfo]:
            return await AsyncSandbox.list(api_key, base_url, state=state, metadata=metadata)

        return _run_in_own_thread(fetch)

    def keep(self) -> None:
        """Leave the sandbox running when this object closes (see AsyncSandbox.keep)."""
        self._async.keep()

    def create(self) -> str:
        return self._loop.run(self._async.create)

    def info(self) -> SandboxInfo:
        return self._loop.run(self._async.info)

    def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | CodeContext | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: OutputCallback | None = None,
        timeout: float | None = None,
        envs: dict[str, str] | None = None,
    ) -> Execution:
        """See AsyncSandbox.run_code; callbacks run on the SDK's helper thread."""
        return self._loop.run(
            partial(
                self._async.run_code,
                code,
                language=language,
                context=context,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
                timeout=timeout,
                envs=envs,
            )
        )

    def create_code_context(
        self, *, language: str = "python", cwd: str | None = None
    ) -> CodeContext:
        return self._loop.run(partial(self._async.create_code_context, language=language, cwd=cwd))

    def list_code_contexts(self) -> builtins.list[CodeContext]:
        return self._loop.run(self._async.list_code_contexts)

    def restart_code_context(self, context: str | CodeContext) -> CodeContext:
        return self._loop.run(partial(self._async.restart_code_context, context))

    def remove_code_context(self, context: str | CodeContext) -> None:
        self._loop.run(partial(self._async.remove_code_context, context))

    def interrupt_code(self, context: str | CodeContext = "python") -> None:
        self._loop.run(partial(self._async.interrupt_code, context))

    def metrics(self) -> SandboxMetrics:
        return self._loop.run(self._async.metrics)

    def logs(self) -> builtins.list[LogLine]:
        return self._loop.run(self._async.logs)

    def set_timeout(self, seconds: float) -> SandboxInfo:
        return self._loop.run(self._async.set_timeout, seconds)

    def keepalive(self) -> SandboxInfo:
        return self._loop.run(self._async.keepalive)

    def pause(self) -> SandboxInfo:
        return self._loop.run(self._async.pause)

    def resume(self) -> SandboxInfo:
        return self._loop.run(self._async.resume)

    def snapshot(self) -> str:
        return self._loop.run(self._async.snapshot)

    def status(self) -> dict[str, Any]:
        return self._loop.run(self._async.status)

    def destroy(self) -> None:
        self._loop.run(self._async.destroy)

    def ping(self) -> float:
        return self._loop.run(self._async.ping)

    # -- the original Node.js SDK's operations -----------------------------------------------

    def run_command(
        self,
        cmd: str,
        args: builtins.list[str] | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        return self._loop.run(partial(self._async.run_command, cmd, args, cwd=cwd, env=env))

    def write_file(self, path: str, content: str | bytes) -> None:
        self._loop.run(self._async.write_file, path, content)

    def get_file(self, path: str) -> str:
        return self._loop.run(self._async.get_file, path)

    def get_file_bytes(self, path: str) -> bytes:
        return self._loop.run(self._async.get_file_bytes, path)
