"""Commands: `exec` (foreground), `spawn` (background), and what works on a running process:
`attach`, `stdin`, `signal`, `resize`, `processes`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import signal as signals
from typing import Any

from . import fields
from .context import Request
from .errors import (
    BAD_REQUEST,
    BUSY,
    CANCELLED,
    NOT_FOUND,
    PERMISSION_DENIED,
    AgentError,
    from_os_error,
)
from .identity import ROOT, Identity
from .launch import PtySize
from .processes import ManagedProcess, resize, signal_number
from .reaper import kill_user_processes, user_pids
from .settings import user_environment
from .spawner import HelperUnresponsive, refuse_nul

Message = dict[str, Any]

CANCEL_END_SECONDS = 30.0
"""An upper bound on a cancelled command's end: its tree's (processes.GROUP_KILL_SECONDS, with
every user process killed on the way) and its exit's report (EXIT_REPORT_SECONDS)."""


def _decode_data(msg: Message, name: str) -> bytes:
    text = fields.required_str(msg, name, allow_empty=True)
    if fields.encoding(msg) == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AgentError(BAD_REQUEST, f"field {name!r} is not valid base64") from None
    return text.encode("utf-8", errors="surrogateescape")


def _pty_size(msg: Message) -> PtySize | None:
    value = msg.get("pty")
    if value is None or value is False:
        return None
    if value is True:
        return PtySize(80, 24)
    if not isinstance(value, dict):
        raise AgentError(BAD_REQUEST, "field 'pty' must be an object with 'cols' and 'rows'")
    cols = fields.optional_int(value, "cols", 80, minimum=1)
    rows = fields.optional_int(value, "rows", 24, minimum=1)
    assert cols is not None
    assert rows is not None
    return PtySize(min(cols, 10000), min(rows, 10000))


def _identity(req: Request) -> Identity:
    """Who the command runs as: the sandbox user, or root where the server allowed it."""
    user = fields.optional_str(req.msg, "user", "")
    if user in ("", "user"):
        return req.identity
    if user != "root":
        raise AgentError(BAD_REQUEST, f"user must be 'user' or 'root', not {user!r}")
    if not req.settings.root:
        raise AgentError(PERMISSION_DENIED, "root is not allowed in this sandbox")
    return ROOT


async def _start(req: Request, *, background: bool, stdin: bool) -> ManagedProcess:
    msg, settings = req.msg, req.settings
    cmd = fields.required_str(msg, "cmd")
    args = fields.str_list(msg, "args")
    cwd = os.path.join(settings.workdir, fields.optional_str(msg, "cwd", settings.workdir))
    env = user_environment()
    env.update(req.environment)
    env.update(req.egress.environment())
    identity = _identity(req)
    env.update(identity.environment())
    env.update(fields.str_map(msg, "env"))
    refuse_nul(cmd=cmd, args=args, cwd=cwd, env=env)  # at once, whichever way it starts
    pty_size = _pty_size(msg) if background else None
    try:
        return await req.table.start(
            cmd,
            args,
            cwd=cwd,
            env=env,
            log_capacity=settings.ring_bytes,
            background=background,
            stdin=stdin,
            identity=identity,
            pty_size=pty_size,
        )
    except HelperUnresponsive as exc:
        raise AgentError(BUSY, str(exc)) from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.isdir(cwd):  # noqa: ASYNC240
            raise from_os_error(exc, cwd) from exc
        raise from_os_error(exc, cmd) from exc


def _arm_timeout(process: ManagedProcess, seconds: float | None) -> asyncio.TimerHandle | None:
    if seconds is None:
        return None

    def expire() -> None:
        if process.running:
            process.timed_out = True
            process.kill_group(escalate=True)

    return asyncio.get_running_loop().call_later(seconds, expire)


async def _feed_stdin(process: ManagedProcess, data: bytes) -> None:
    stdin = process.proc.stdin
    assert stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()


async def handle_exec(req: Request) -> Message:
    msg, settings = req.msg, req.settings
    stream = fields.optional_bool(msg, "stream", False)
    encoding = fields.encoding(msg)
    timeout = fields.optional_seconds(msg, "timeout")
    stdin_data = _decode_data(msg, "stdin") if msg.get("stdin") is not None else None
    process = await _start(req, background=False, stdin=stdin_data is not None)
    timer = _arm_timeout(process, timeout)
    feeder = None
    if stdin_data is not None:
        feeder = asyncio.create_task(_feed_stdin(process, stdin_data))
    subscriber = process.subscribe(
        req.id,
        primary=True,
        stream=stream,
        encoding=encoding,
        window=settings.window,
        collect_limit=settings.max_output,
        binary=req.channel is not None,
    )
    req.subscriptions.by_request[req.id] = (process, subscriber)
    try:
        await process.follow(subscriber, req.emit)
    except asyncio.CancelledError:
        # A cancel (or the client's disconnect) ends the command as its timeout would: the
        # answer comes once nothing of it is left, so the next command finds room to start.
        process.kill_group(escalate=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.finished.wait(), CANCEL_END_SECONDS)
        raise AgentError(CANCELLED, "the command was cancelled and killed") from None
    finally:
        if timer is not None:
            timer.cancel()
        if feeder is not None:
            feeder.cancel()
        req.subscriptions.by_request.pop(req.id, None)
        await process.unsubscribe(subscriber)
    collected = subscriber.collected
    assert collected is not None
    response: Message = {
        "type": "execResponse",
        "pid": process.pid,
        "stdout": _render(collected.parts["stdout"], encoding),
        "stderr": _render(collected.parts["stderr"], encoding),
        "exitCode": process.exit_code,
        "signal": process.signal,
        "timedOut": process.timed_out,
        "oom": process.oom,
        "truncated": collected.truncated,
        "durationMs": process.duration_ms,
    }
    if encoding != "utf-8":
        response["encoding"] = encoding
    return response


def _render(data: bytearray, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", errors="replace")


async def _stream_until_exit(
    req: Request, process: ManagedProcess, *, primary: bool, replay: bool
) -> Message:
    subscriber = process.subscribe(
        req.id,
        primary=primary,
        stream=True,
        encoding=fields.encoding(req.msg),
        window=req.settings.window,
        replay=replay,
        binary=req.channel is not None,
    )
    req.subscriptions.by_request[req.id] = (process, subscriber)
    try:
        if primary:
            await req.emit({"id": req.id, "type": "spawnResponse", "pid": process.pid})
        else:
            await req.emit(
                {
                    "id": req.id,
                    "type": "attachResponse",
                    "pid": process.pid,
                    "running": process.running,
                    "dropped": subscriber.cursor if replay else 0,
                    "cmd": process.cmd,
                    "args": process.args,
                    "pty": process.master_fd is not None,
                }
            )
        await process.follow(subscriber, req.emit)
    except asyncio.CancelledError:
        # The client stopped following (detach, cancel, or it went away); the process goes on.
        return {"type": "detached", "pid": process.pid}
    finally:
        req.subscriptions.by_request.pop(req.id, None)
        await process.unsubscribe(subscriber)
    return process.exit_event(req.id)


async def handle_spawn(req: Request) -> Message:
    timeout = fields.optional_seconds(req.msg, "timeout")
    process = await _start(req, background=True, stdin=True)
    _arm_timeout(process, timeout)
    return await _stream_until_exit(req, process, primary=True, replay=True)


async def handle_attach(req: Request) -> Message:
    process = req.table.get(req.msg.get("pid"))
    replay = fields.optional_bool(req.msg, "replay", True)
    return await _stream_until_exit(req, process, primary=False, replay=replay)


async def handle_stdin(req: Request) -> Message:
    process = req.table.get(req.msg.get("pid"))
    data = _decode_data(req.msg, "data") if req.msg.get("data") is not None else b""
    eof = fields.optional_bool(req.msg, "eof", False)
    if not process.running:
        raise AgentError(NOT_FOUND, f"process {process.pid} has exited")
    try:
        if process.master_fd is not None:
            if eof:
                data += b"\x04"  # a terminal's end of input is ^D
            view = memoryview(data)
            while view:
                view = view[await asyncio.to_thread(os.write, process.master_fd, view) :]
        else:
            stdin = process.proc.stdin
            if stdin is None or stdin.is_closing():
                raise AgentError(BAD_REQUEST, f"stdin of process {process.pid} is closed")
            stdin.write(data)
            await stdin.drain()
            if eof:
                stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        raise AgentError(NOT_FOUND, f"process {process.pid} no longer reads its input") from None
    return {"type": "stdinResponse", "pid": process.pid, "bytes": len(data)}


async def handle_signal(req: Request) -> Message:
    process = req.table.get(req.msg.get("pid"))
    number = signal_number(req.msg.get("signal", "SIGTERM"))
    return {
        "type": "signalResponse",
        "pid": process.pid,
        "signal": signals.Signals(number).name,
        "delivered": process.kill_group(number),
    }


async def handle_resize(req: Request) -> Message:
    process = req.table.get(req.msg.get("pid"))
    cols = fields.required_int(req.msg, "cols", minimum=1)
    rows = fields.required_int(req.msg, "rows", minimum=1)
    resize(process, PtySize(min(cols, 10000), min(rows, 10000)))
    return {"type": "resizeResponse", "pid": process.pid, "cols": cols, "rows": rows}


async def handle_processes(req: Request) -> Message:
    return {"type": "processesResponse", "processes": [p.describe() for p in req.table.all()]}


KILL_ALL_ROUNDS = 3
"""A bomb that regrew from a process born in the last instant gets another round."""


async def handle_kill_all(req: Request) -> Message:
    """Kill every process of the sandbox user, whatever started it (a fork bomb's way back)."""
    uid = req.identity.uid
    if uid is None:
        raise AgentError(BAD_REQUEST, "user code runs as the agent itself here: nothing to kill")
    killed = 0
    for _ in range(KILL_ALL_ROUNDS):
        killed += await kill_user_processes(uid)
        await asyncio.sleep(0.2)
        if not any(state not in ("Z", "X") for state in user_pids(uid).values()):
            break  # and still nothing a moment later
    return {"type": "killAllResponse", "killed": killed}
