"""Killing every process of the sandbox user: the way back from a fork bomb.

A fork bomb outgrows any one process group (its members fork while the group is signalled) and
fills the pids limit, after which nothing new can start. The agent runs as root, so it can stop
and kill the user's processes through /proc without forking (it could not: the pids limit is
full). The spawner helper is one of them; the agent starts a new one with the next
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

KILL_SECONDS = 10.0
QUIET_SECONDS = 0.5


def user_pids(uid: int) -> dict[int, str]:
    """Every process whose real or effective uid is `uid`, with its state letter."""
    found: dict[int, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except (OSError, ValueError):
            continue  # gone meanwhile
        uids = fields.get("Uid", "").split()
        if uids[:2] and str(uid) in uids[:2]:
            found[int(name)] = fields.get("State", "?").strip()[:1]
    return found


def group_states(pgid: int) -> list[str]:
    """The state letters of every process in process group `pgid` (zombies included)."""
    states: list[str] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid).encode():
            states.append(fields[0].decode())
    return states


def _signal_all(pids: dict[int, str], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def kill_user_processes(uid: int) -> int:
    """Kill every process of `uid`; returns how many were killed.

    Each round first freezes: SIGSTOP to every running process of the user, again and again
    until none runs (a stopped process cannot fork, so nothing new is born while the round
    looks). Then SIGKILL to all of them at once. Killing some may orphan a process group,
    and the kernel then wakes its stopped members (SIGCONT) for a moment: the next round
    catches whatever they forked. Rounds go on until nothing of the user has been seen alive
    for QUIET_SECONDS, or KILL_SECONDS have passed."""
    deadline = time.monotonic() + KILL_SECONDS
    killed: set[int] = set()
    quiet_since: float | None = None
    while (now := time.monotonic()) < deadline:
        while time.monotonic() < deadline:
            running = {pid: s for pid, s in user_pids(uid).items() if s not in ("T", "t", "Z", "X")}
            if not running:
                break
            _signal_all(running, signal.SIGSTOP)
            await asyncio.sleep(0)
        frozen = {pid: s for pid, s in user_pids(uid).items() if s not in ("Z", "X")}
        if not frozen:
            quiet_since = now if quiet_since is None else quiet_since
            if now - quiet_since >= QUIET_SECONDS:
                break
            await asyncio.sleep(0.05)
            continue
        quiet_since = None
        _signal_all(frozen, signal.SIGKILL)
        killed.update(frozen)
        await asyncio.sleep(0.01)
    return len(killed)
