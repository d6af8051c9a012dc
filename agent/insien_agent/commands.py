"""`exec`: run one command to completion and answer with its output and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from . import fields
from .errors import from_os_error
from .settings import AgentSettings, user_environment

Message = dict[str, Any]


async def _drain(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read a pipe to its end, keeping at most `limit` bytes so a chatty command can't bloat us."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(64 * 1024):
        room = limit - len(kept)
        if len(chunk) > room:
            truncated = True
            chunk = chunk[:room]
        kept += chunk
    return bytes(kept), truncated


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The command leads its own session, so its pid is also its process group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def handle_exec(msg: Message, settings: AgentSettings) -> Message:
    cmd = fields.required_str(msg, "cmd")
    args = fields.str_list(msg, "args")
    cwd = fields.optional_str(msg, "cwd", settings.workdir)
    env = user_environment()
    env.update(fields.str_map(msg, "env"))
    try:
        proc = await asyncio.create_subprocess_exec(
            cmd,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.isdir(cwd):  # noqa: ASYNC240 (error path, local fs)
            raise from_os_error(exc, cwd) from exc
        raise from_os_error(exc, cmd) from exc
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        (out, out_cut), (err, err_cut), exit_code = await asyncio.gather(
            _drain(proc.stdout, settings.max_output),
            _drain(proc.stderr, settings.max_output),
            proc.wait(),
        )
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    response: Message = {
        "type": "execResponse",
        "stdout": out.decode("utf-8", errors="replace"),
        "stderr": err.decode("utf-8", errors="replace"),
        # A command killed by a signal reports as a shell would (128 + signal number).
        "exitCode": exit_code if exit_code >= 0 else 128 - exit_code,
    }
    if exit_code < 0:
        response["signal"] = signal.Signals(-exit_code).name
    if out_cut or err_cut:
        response["truncated"] = True
    return response
