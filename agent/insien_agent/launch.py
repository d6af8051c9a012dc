"""Starting a command: as the sandbox user, through the spawner helper (pipes) or directly on
a pseudo-terminal, with its output pipes widened and its OOM score raised. What happens to it
afterwards (its output, its subscribers, its end) is `processes`' business."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import struct
import termios
from dataclasses import dataclass

from .identity import Identity
from .spawner import SpawnedProcess, Spawner
from .wire import pipe_fileno, widen_pipe

Started = asyncio.subprocess.Process | SpawnedProcess


@dataclass(frozen=True)
class PtySize:
    cols: int
    rows: int


def set_winsize(fd: int, size: PtySize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


async def start_process(
    identity: Identity,
    spawner: Spawner | None,
    cmd: str,
    args: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    stdin: bool,
    pty_size: PtySize | None,
) -> tuple[Started, int | None]:
    """Start the command; returns it and, for a terminal, the master side of its pty."""
    master_fd: int | None = None
    proc: Started
    as_user = identity.spawn_options()
    if pty_size is not None:
        master_fd, slave_fd = pty.openpty()
        set_winsize(slave_fd, pty_size)
        if identity.uid is not None:
            # Programs that reopen /dev/tty (password prompts, editors) need to own it.
            os.fchown(slave_fd, identity.uid, -1)
        env = {**env, "TERM": env.get("TERM", "xterm-256color")}
        try:
            proc = await asyncio.create_subprocess_exec(
                cmd,
                *args,
                stdin=slave_fd,
                stdout=slave_fd,
                stderr=slave_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_take_controlling_terminal,
                **as_user,
            )
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
    elif spawner is not None:
        proc = await spawner.spawn(cmd, args, cwd=cwd, env=env, stdin=stdin)
    else:
        proc = await asyncio.create_subprocess_exec(
            cmd,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **as_user,
        )
    _widen_output_pipes(proc)
    _prefer_for_oom_kill(proc.pid)
    return proc, master_fd


def _widen_output_pipes(proc: Started) -> None:
    """Best effort: a command that already exited may have had its pipes closed by now."""
    for reader in (proc.stdout, proc.stderr):
        fd = pipe_fileno(reader) if reader is not None else None
        if fd is not None:
            with contextlib.suppress(OSError):
                widen_pipe(fd)


def _prefer_for_oom_kill(pid: int) -> None:
    """Past the memory limit, the kernel should kill user code, not the agent: raise the
    command's OOM score (its children inherit it). Best effort: it may have exited already."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as adj:
        adj.write("500")


def _take_controlling_terminal() -> None:
    # Runs in the child between fork and exec: make the pty (fd 0) the session's terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
