"""Killing every process of the sandbox user: the way back from a fork bomb.

A fork bomb outgrows any one process group (its members fork while the group is signalled) and
fills the pids limit, after which nothing new can start. The agent runs as root, so it can stop
and kill the user's processes one by one through /proc without forking (it could not: the pids
limit is full). The spawner helper is one of them; the agent starts a new one with the next
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

KILL_SECONDS = 10.0
QUIET_PASSES = 5
QUIET_SECONDS = 0.05


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
    """Kill every process of `uid`, pass after pass, until several passes in a row find none
    alive (or the time is up); returns how many were killed.

    Each pass stops what it found before killing it: a stopped process cannot fork, so a bomb
    cannot replace what one pass kills faster than the next pass finds it."""
    deadline = time.monotonic() + KILL_SECONDS
    killed: set[int] = set()
    quiet = 0
    while time.monotonic() < deadline and quiet < QUIET_PASSES:
        alive = {pid: state for pid, state in user_pids(uid).items() if state != "Z"}
        if not alive:
            # Found nothing: look again a few times, a moment apart, before believing it.
            quiet += 1
            await asyncio.sleep(QUIET_SECONDS)
            continue
        quiet = 0
        _signal_all(alive, signal.SIGSTOP)
        _signal_all(alive, signal.SIGKILL)
        killed.update(alive)
        await asyncio.sleep(0)
    return len(killed)
