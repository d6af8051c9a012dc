"""envd's `process.Process` service, translated to Insien's command messages.

`Start` is a `spawn` followed to its end, `Connect` an `attach` without replay (E2B sends only
what comes after), `SendInput`/`CloseStdin` are `stdin`, `SendSignal` is `signal`, `Update` is
`resize`, `List` is `processes`. The processes are the agent's own: there is no second process
table. Closing a stream only stops following the command; a `Connect-Timeout-Ms` on `Start`
bounds the command itself, as envd does.
"""

from __future__ import annotations

import base64
import binascii
import signal
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ...link import AgentGone
from ...protocol import NUL_FREE, Message, ProtocolError
from .calls import Emit, EnvdCall, Method, checked, connect_code
from .connect import Code, ConnectError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


OsText = Annotated[str, NUL_FREE]
"""What reaches the operating system (argv, cwd, environment) has no NUL byte: refused as
`invalid_argument` at once, never handed to the agent's spawner."""


class ProcessConfig(_Model):
    cmd: Annotated[str, Field(min_length=1), NUL_FREE]
    args: list[OsText] = []
    envs: dict[OsText, OsText] = {}
    cwd: OsText | None = None


class PtySize(_Model):
    cols: int = Field(80, ge=1, le=10_000)
    rows: int = Field(24, ge=1, le=10_000)


class Pty(_Model):
    size: PtySize | None = None


class StartRequest(_Model):
    process: ProcessConfig
    pty: Pty | None = None
    tag: str | None = None
    stdin: bool | None = None


class Selector(_Model):
    pid: int | None = Field(None, ge=1)
    tag: str | None = None


class SelectorRequest(_Model):
    process: Selector


class ProcessInput(_Model):
    stdin: str | None = None
    pty: str | None = None


class SendInputRequest(SelectorRequest):
    input: ProcessInput


class SendSignalRequest(SelectorRequest):
    signal: str | int = "SIGNAL_SIGTERM"


class UpdateRequest(SelectorRequest):
    pty: Pty | None = None


def pid_of(selector: Selector) -> int:
    if selector.pid is not None:
        return selector.pid
    if selector.tag is not None:
        raise ConnectError(Code.NOT_FOUND, "Insien does not tag processes: select one by pid")
    raise ConnectError(Code.INVALID_ARGUMENT, "process.pid is required")


def decode_bytes(value: str) -> bytes:
    """Protobuf JSON bytes: standard or URL-safe base64, padding optional."""
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raise ConnectError(Code.INVALID_ARGUMENT, "input is not base64") from None


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_SIGNALS = {"SIGNAL_SIGTERM": "SIGTERM", "SIGNAL_SIGKILL": "SIGKILL", 15: "SIGTERM", 9: "SIGKILL"}


def end_event(exit_message: Message) -> dict[str, Any]:
    """envd's end event, in Go's terms: a signalled process did not exit, its code is -1."""
    name = exit_message.get("signal")
    end: dict[str, Any]
    if isinstance(name, str) and name:
        try:
            described = (signal.strsignal(signal.Signals[name]) or name).lower()
        except (KeyError, ValueError):
            described = name.lower()
        end = {"exitCode": -1, "exited": False, "status": f"signal: {described}"}
    else:
        code = exit_message.get("exitCode")
        code = code if isinstance(code, int) else -1
        end = {"exitCode": code, "exited": True, "status": f"exit status {code}"}
    if exit_message.get("oom"):
        end["error"] = "the command was killed: the sandbox ran out of memory"
    return {"event": {"end": end}}


async def _follow(call: EnvdCall, emit: Emit, message: Message, *, close_stdin: bool) -> None:
    """Send a `spawn` or `attach` and translate what it answers until the process ends."""
    pty = "pty" in message
    try:
        async with call.link.request(message, binary=True) as pending:
            async for reply in pending:
                event = reply.message
                kind = event.get("type")
                if kind in ("spawnResponse", "attachResponse"):
                    pid = event["pid"]
                    pty = pty or bool(event.get("pty"))
                    await emit({"event": {"start": {"pid": pid}}})
                    if close_stdin:
                        # A command that has already exited has no stdin left to close.
                        with suppress(ConnectError):
                            await call.agent({"type": "stdin", "pid": pid, "eof": True})
                elif kind == "output":
                    data = reply.data
                    if data is None:  # a JSON event (only without a binary channel)
                        data = str(event.get("data", "")).encode()
                    stream = "pty" if pty else str(event.get("stream", "stdout"))
                    await emit({"event": {"data": {stream: encode_bytes(data)}}})
                elif kind == "exit":
                    await emit(end_event(event))
                    return
                elif kind == "detached":
                    return
                else:
                    checked(event)
                    return
    except AgentGone as exc:
        raise call.gone(exc) from None
    except ProtocolError as exc:
        raise ConnectError(connect_code(exc.code), exc.message) from None
    if call.link.closed.is_set():
        raise call.gone(AgentGone(call.link.close_reason))


BASH = "/bin/bash"
SHELL = "/bin/sh"


async def start(call: EnvdCall, emit: Emit) -> None:
    request = call.parse(StartRequest)
    config = request.process
    message: Message = {"type": "spawn", "cmd": config.cmd, "args": config.args}
    if call.root:
        # allowed only where root is unprivileged outside (envd.py); the agent starts it itself
        message["user"] = "root"
    if config.envs:
        message["env"] = config.envs
    if config.cwd:
        message["cwd"] = config.cwd
    if request.pty is not None:
        size = request.pty.size or PtySize()
        message["pty"] = {"cols": size.cols, "rows": size.rows}
    if call.deadline is not None:
        message["timeout"] = call.deadline
    # envd gives a command no stdin unless asked; Insien's spawn always opens one.
    close_stdin = request.pty is None and not request.stdin
    try:
        await _follow(call, emit, message, close_stdin=close_stdin)
    except ConnectError as exc:
        if not (config.cmd == BASH and exc.code is Code.NOT_FOUND and BASH in exc.message):
            raise
        # E2B's SDKs run every command line as `/bin/bash -l -c …`; an image without bash
        # (busybox, Alpine, distroless with a shell) runs it with its own /bin/sh instead.
        await _follow(call, emit, {**message, "cmd": SHELL}, close_stdin=close_stdin)


async def connect(call: EnvdCall, emit: Emit) -> None:
    pid = pid_of(call.parse(SelectorRequest).process)
    message: Message = {"type": "attach", "pid": pid, "replay": False}
    await _follow(call, emit, message, close_stdin=False)


async def list_processes(call: EnvdCall) -> dict[str, Any]:
    reply = await call.agent({"type": "processes"})
    processes = [
        {
            "config": {"cmd": p.get("cmd", ""), "args": p.get("args", []), "envs": {}},
            "pid": p["pid"],
        }
        for p in reply.get("processes", [])
        if p.get("running")
    ]
    return {"processes": processes}


async def send_input(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(SendInputRequest)
    pid = pid_of(request.process)
    raw = request.input.stdin if request.input.stdin is not None else request.input.pty
    data = decode_bytes(raw or "")
    await call.agent(
        {"type": "stdin", "pid": pid, "data": encode_bytes(data), "encoding": "base64"}
    )
    return {}


async def close_stdin(call: EnvdCall) -> dict[str, Any]:
    pid = pid_of(call.parse(SelectorRequest).process)
    await call.agent({"type": "stdin", "pid": pid, "eof": True})
    return {}


async def send_signal(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(SendSignalRequest)
    pid = pid_of(request.process)
    name = _SIGNALS.get(request.signal)
    if name is None:
        raise ConnectError(Code.INVALID_ARGUMENT, f"unknown signal {request.signal!r}")
    await call.agent({"type": "signal", "pid": pid, "signal": name})
    return {}


async def update(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(UpdateRequest)
    pid = pid_of(request.process)
    if request.pty is not None and request.pty.size is not None:
        size = request.pty.size
        await call.agent({"type": "resize", "pid": pid, "cols": size.cols, "rows": size.rows})
    return {}


class StreamData(_Model):
    input: ProcessInput


class StreamInputEvent(_Model):
    """One message of `StreamInput`: `start`, `data` or `keepalive` (ignored)."""

    start: SelectorRequest | None = None
    data: StreamData | None = None


async def stream_input(call: EnvdCall, messages: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """`start` names the process, then each `data` goes to its stdin (or PTY) in order."""
    pid: int | None = None
    async for raw in messages:
        event = replace(call, message=raw).parse(StreamInputEvent)
        if event.start is not None:
            pid = pid_of(event.start.process)
        elif event.data is not None:
            if pid is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "data came before the stream's start")
            given = event.data.input
            data = decode_bytes((given.stdin if given.stdin is not None else given.pty) or "")
            await call.agent(
                {"type": "stdin", "pid": pid, "data": encode_bytes(data), "encoding": "base64"}
            )
    return {}


KEEPALIVE: dict[str, Any] = {"event": {"keepalive": {}}}
METHODS: dict[str, Method] = {
    "/process.Process/Start": Method(stream=start, keepalive=KEEPALIVE),
    "/process.Process/Connect": Method(stream=connect, keepalive=KEEPALIVE),
    "/process.Process/List": Method(unary=list_processes),
    "/process.Process/SendInput": Method(unary=send_input),
    "/process.Process/CloseStdin": Method(unary=close_stdin),
    "/process.Process/SendSignal": Method(unary=send_signal),
    "/process.Process/Update": Method(unary=update),
    "/process.Process/StreamInput": Method(client_stream=stream_input),
}
