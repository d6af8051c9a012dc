"""`sandbox.commands` and `sandbox.pty`: foreground commands, background handles, terminals.

A little long: commands, background handles and terminals share the spawn path.
"""

from __future__ import annotations

import base64
import codecs
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
from anyio.abc import TaskStatus

from ._buffer import Buffer
from ._errors import RPCError, SandboxClosedError
from ._rpc import Message, check
from ._types import CommandResult, OutputChunk, ProcessInfo, Stream

if TYPE_CHECKING:
    from ._session import Session

OutputCallback = Callable[[Any], Awaitable[None] | None]
MAX_KEPT_OUTPUT = 16 * 1024 * 1024
ITERATION_BUFFER = 1024


class _Text:
    """Output bytes as text, never splitting a character across chunks."""

    def __init__(self) -> None:
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }

    def decode(self, stream: str, data: bytes, *, final: bool = False) -> str:
        return str(self._decoders[stream].decode(data, final))


async def _notify(callback: OutputCallback | None, data: Any) -> None:
    if callback is not None:
        result = callback(data)
        if inspect.isawaitable(result):
            await result


def _command_line(cmd: str, args: list[str] | None) -> tuple[str, list[str]]:
    """No args: `cmd` is a shell command line. With args: `cmd` runs directly, no shell."""
    if args is None:
        return "/bin/sh", ["-c", cmd]
    return cmd, list(args)


def _result(reply: Message, binary: bool = False) -> CommandResult:
    def text(value: str) -> str:
        return base64.b64decode(value).decode("utf-8", "replace") if binary else value

    return CommandResult(
        stdout=text(reply.get("stdout", "")),
        stderr=text(reply.get("stderr", "")),
        exit_code=int(reply.get("exitCode", -1)),
        signal=reply.get("signal"),
        truncated=bool(reply.get("truncated", False)),
        timed_out=bool(reply.get("timedOut", False)),
        oom=bool(reply.get("oom", False)),
        duration_ms=reply.get("durationMs"),
        pid=reply.get("pid"),
    )


class CommandHandle:
    """A process running in the sandbox: its output as it comes, its exit, and its controls.

    Output is consumed in the background as it arrives (callbacks run then), kept for `wait()`
    up to 16 MiB per stream, and offered to `async for chunk in handle` through a buffer of the
    latest 1024 chunks. The process keeps running if this handle goes away; reconnect with
    `sandbox.commands.connect(pid)`.
    """

    def __init__(
        self,
        commands: Commands,
        *,
        binary: bool,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> None:
        self._commands = commands
        self._session = commands.session
        self._binary = binary
        self._on = {"stdout": on_stdout, "stderr": on_stderr}
        self.pid = 0
        self._kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._truncated = False
        self._exit: Message | None = None
        self._error: Exception | None = None
        self._done = anyio.Event()
        self._chunks = Buffer[OutputChunk](ITERATION_BUFFER)
        self.dropped_chunks = 0
        self._text = _Text()

    async def _follow(
        self, message: Message, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        connection = await self._session.connection()
        started = False
        try:
            async with connection.stream(message) as replies:
                async for reply in replies:
                    kind = reply.get("type")
                    if kind in ("spawnResponse", "attachResponse"):
                        self.pid = int(reply["pid"])
                        started = True
                        task_status.started()
                    elif kind == "output":
                        await self._output(reply)
                    elif kind in ("exit", "detached"):
                        await self._flush_text()
                        self._exit = reply
                        return
                    else:
                        check(reply)
                        return
            self._error = connection.closed_error("the connection ended before the process did")
        except (RPCError, SandboxClosedError) as exc:
            if not started:
                raise
            self._error = exc
        finally:
            self._done.set()
            self._chunks.close()

    async def _output(self, reply: Message) -> None:
        stream: Stream = "stderr" if reply.get("stream") == "stderr" else "stdout"
        raw = reply.get("data", "")
        data: str | bytes
        if isinstance(raw, bytes):  # a binary frame: raw bytes
            as_bytes = raw
            data = raw if self._binary else self._text.decode(stream, raw)
        else:  # an `output` event (a server without binary frames, or a `dropped` count)
            data = base64.b64decode(raw) if self._binary else raw
            as_bytes = data if isinstance(data, bytes) else data.encode()
        await self._deliver(stream, data, as_bytes, int(reply.get("dropped", 0)))

    async def _flush_text(self) -> None:
        """The rest of a character split at the very end of the output."""
        if self._binary:
            return
        for stream in ("stdout", "stderr"):
            rest = self._text.decode(stream, b"", final=True)
            if rest:
                await self._deliver(stream, rest, b"", 0)

    async def _deliver(
        self, stream: Stream, data: str | bytes, as_bytes: bytes, dropped: int
    ) -> None:
        kept = self._kept[stream]
        room = MAX_KEPT_OUTPUT - len(kept)
        if len(as_bytes) > room:
            self._truncated = True
        kept += as_bytes[: max(room, 0)]
        await _notify(self._on[stream], data)
        if not self._chunks.put_nowait(OutputChunk(stream, data, dropped)):
            self.dropped_chunks += 1  # nobody is iterating; the kept output still has it

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._chunks

    @property
    def exited(self) -> bool:
        return self._exit is not None and self._exit.get("type") == "exit"

    async def wait(self) -> CommandResult:
        """Wait for the process to end; raises what ended the following otherwise."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._exit is not None
        if self._exit["type"] == "detached":
            raise SandboxClosedError(f"stopped following process {self.pid}")
        return CommandResult(
            stdout=self._kept["stdout"].decode("utf-8", "replace"),
            stderr=self._kept["stderr"].decode("utf-8", "replace"),
            exit_code=int(self._exit.get("exitCode", -1)),
            signal=self._exit.get("signal"),
            truncated=self._truncated,
            timed_out=bool(self._exit.get("timedOut", False)),
            oom=bool(self._exit.get("oom", False)),
            duration_ms=self._exit.get("durationMs"),
            pid=self.pid,
        )

    async def kill(self, signal: str | int = "SIGKILL") -> None:
        await self._commands.kill(self.pid, signal)

    async def send_stdin(self, data: str | bytes, *, eof: bool = False) -> None:
        await self._commands.send_stdin(self.pid, data, eof=eof)

    async def disconnect(self) -> None:
        """Stop following the process (it keeps running); `wait()` then raises."""
        connection = await self._session.connection()
        await connection.call({"type": "detach", "pid": self.pid})
        await self._done.wait()


class Commands:
    """Run commands in the sandbox: `await sandbox.commands.run("ls -la")`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._session = session

    @overload
    async def run(
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
    async def run(
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

    async def run(
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
        """Run a command. Without `args`, `cmd` is a shell command line (`/bin/sh -c`).

        `timeout` (seconds) kills the command's whole process group when it passes; the
        result then has `timed_out` set and keeps the output so far. `background=True` returns
        a CommandHandle at once instead of waiting.
        """
        program, argv = _command_line(cmd, args)
        message: Message = {"cmd": program, "args": argv}
        if cwd is not None:
            message["cwd"] = cwd
        if env is not None:
            message["env"] = env
        if timeout is not None:
            message["timeout"] = timeout
        if background:
            handle = await self._spawn(message, on_stdout, on_stderr, pty=None)
            if stdin is not None:
                await handle.send_stdin(stdin, eof=True)
            return handle
        if stdin is not None:
            message["stdin"] = stdin
        return await self._exec(message, on_stdout, on_stderr)

    async def _exec(
        self, message: Message, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
    ) -> CommandResult:
        connection = await self._session.connection()
        streaming = on_stdout is not None or on_stderr is not None
        request = {"type": "exec", **message, "stream": streaming}
        if streaming:
            request["binary"] = True  # output as raw binary messages (docs/protocol.md)
        text = _Text()
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        async with connection.stream(request) as replies:
            async for reply in replies:
                if reply.get("type") == "output":
                    stream = "stderr" if reply.get("stream") == "stderr" else "stdout"
                    data = reply.get("data", "")
                    if isinstance(data, bytes):
                        data = text.decode(stream, data)
                    if data:
                        await _notify(callbacks[stream], data)
                    continue
                for stream, callback in callbacks.items():
                    rest = text.decode(stream, b"", final=True)
                    if rest:
                        await _notify(callback, rest)
                return _result(check(reply))
        raise connection.closed_error("the connection ended before the command did")

    async def _spawn(
        self,
        message: Message,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        *,
        pty: dict[str, int] | None,
    ) -> CommandHandle:
        handle = CommandHandle(
            self, binary=pty is not None, on_stdout=on_stdout, on_stderr=on_stderr
        )
        request: Message = {"type": "spawn", **message, "binary": True}
        if pty is not None:
            request.update(pty=pty, encoding="base64")
        await self._session.tasks().start(handle._follow, request)
        return handle

    async def connect(
        self,
        pid: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        replay: bool = True,
        binary: bool = False,
    ) -> CommandHandle:
        """Follow a process started earlier, by anyone: replays its buffered output first."""
        handle = CommandHandle(self, binary=binary, on_stdout=on_stdout, on_stderr=on_stderr)
        request: Message = {"type": "attach", "pid": pid, "replay": replay, "binary": True}
        if binary:
            request["encoding"] = "base64"
        await self._session.tasks().start(handle._follow, request)
        return handle

    async def list(self) -> list[ProcessInfo]:
        """Running processes, and the background ones that exited recently."""
        reply = await (await self._session.connection()).call({"type": "processes"})
        return [ProcessInfo.from_wire(p) for p in reply["processes"]]

    async def kill_all(self) -> int:
        """Kill every process of the sandbox user, whatever started it: the way back from a
        fork bomb. Returns how many processes were killed."""
        reply = await (await self._session.connection()).call({"type": "killAll"})
        return int(reply["killed"])

    async def kill(self, pid: int, signal: str | int = "SIGKILL") -> bool:
        """Send a signal to the process's whole group; False if it had already exited."""
        reply = await (await self._session.connection()).call(
            {"type": "signal", "pid": pid, "signal": signal}
        )
        return bool(reply.get("delivered"))

    async def send_stdin(self, pid: int, data: str | bytes, *, eof: bool = False) -> None:
        message: Message = {"type": "stdin", "pid": pid, "eof": eof}
        if isinstance(data, bytes):
            message.update(data=base64.b64encode(data).decode(), encoding="base64")
        else:
            message["data"] = data
        await (await self._session.connection()).call(message)


class Pty:
    """Interactive terminals: `await sandbox.pty.create(on_data=...)` runs a shell on a PTY."""

    def __init__(self, session: Session, commands: Commands) -> None:
        self._session = session
        self._commands = commands

    async def create(
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
        """Start `cmd` on a pseudo-terminal. Output arrives as bytes; input via send_stdin."""
        message: Message = {"cmd": cmd, "args": list(args if args is not None else ["-i"])}
        if cwd is not None:
            message["cwd"] = cwd
        if env is not None:
            message["env"] = env
        return await self._commands._spawn(message, on_data, None, pty={"cols": cols, "rows": rows})

    async def resize(self, pid: int, *, cols: int, rows: int) -> None:
        await (await self._session.connection()).call(
            {"type": "resize", "pid": pid, "cols": cols, "rows": rows}
        )

    async def send_input(self, pid: int, data: str | bytes) -> None:
        await self._commands.send_stdin(pid, data)

    async def kill(self, pid: int) -> bool:
        return await self._commands.kill(pid)
