"""An init for when the agent is PID 1: in a pod (Docker starts it under docker-init).

PID 1 inherits every orphan in the sandbox: a command's background child whose shell was
killed ends as a zombie nobody reaps unless PID 1 waits for it. The agent cannot be that
reaper itself (a `waitpid(-1)` would take its own children's exit statuses from asyncio), so,
like tini, PID 1 forks first: the child is the agent, the parent only reaps, passes on the
signals an orchestrator stops a container with, and exits as the agent did.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
UNKNOWN_EXIT = 255


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the code, or 128 + the signal that ended it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap_until(agent: int) -> int:
    """Wait for every child and orphan until `agent` ends; its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return UNKNOWN_EXIT  # the agent was reaped by someone else: cannot happen as PID 1
        if pid == agent:
            return exit_code(status)


def become_init_if_pid1() -> None:
    """Return at once unless this process is PID 1; then return only in the forked agent."""
    if os.getpid() != 1:
        return
    # PID 1 drops a signal it has no handler for. Blocked, one sent before the handlers are in
    # place stays pending, and is passed on once they are.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    agent = os.fork()
    if agent == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):  # ended: its exit is about to be reaped
            os.kill(agent, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
    # The agent alone speaks on the attached stream; stderr stays for an init's last words.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os._exit(reap_until(agent))
