"""`insien sandbox shell`: this terminal, in raw mode, wired to a PTY in the sandbox.

Keys go to the sandbox as typed (Ctrl-C included: the raw terminal sends it as a byte, and the
sandbox's terminal turns it into SIGINT there); the window's size follows SIGWINCH.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import tty

import anyio

from .._async import AsyncSandbox

READ_SIZE = 4096


def _size() -> tuple[int, int]:
    size = os.get_terminal_size(sys.stdout.fileno())
    return size.columns, size.lines


async def run_shell(box: AsyncSandbox, cmd: str) -> int:
    """Run `cmd` on a PTY until it exits; returns its exit code."""
    stdin = sys.stdin.fileno()
    out = sys.stdout.buffer

    def show(data: bytes) -> None:
        out.write(data)
        out.flush()

    cols, rows = _size()
    saved = termios.tcgetattr(stdin)
    tty.setraw(stdin)
    try:
        terminal = await box.pty.create(cols=cols, rows=rows, cmd=cmd, args=[], on_data=show)
        async with anyio.create_task_group() as tasks:

            async def keys() -> None:
                while True:
                    await anyio.wait_readable(stdin)
                    data = os.read(stdin, READ_SIZE)
                    if not data:
                        return
                    await box.pty.send_input(terminal.pid, data)

            async def resizes() -> None:
                with anyio.open_signal_receiver(signal.SIGWINCH) as changes:
                    async for _ in changes:
                        cols, rows = _size()
                        await box.pty.resize(terminal.pid, cols=cols, rows=rows)

            tasks.start_soon(keys)
            tasks.start_soon(resizes)
            result = await terminal.wait()
            tasks.cancel_scope.cancel()
        return result.exit_code
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
