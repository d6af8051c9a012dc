"""Ending a command's whole process tree: what its timeout, cancel or kill must leave behind is
nothing, however fast it forks.

A command leads its own session and process group (its pid is both ids). Its tree is every
process in that group or session, and every live descendant of one of them (a child that
moved to a session of its own while its parent lives). Each round freezes the tree first:
SIGSTOP until none of it runs, so nothing new is born while it is looked at. Then SIGKILL to
all of it. The tree has ended when none of it is left in /proc, zombies included: the pids
limit counts a process until it is reaped, so an answer sent earlier could find the next
command unable to start ("Resource temporarily unavailable").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

FREEZE_SECONDS = 0.5
"""How long one round may try to stop the tree before it kills what it has stopped and more."""
POLL_SECONDS = 0.02

Stat = tuple[str, int, int, int]
"""A process's state letter, parent, process group and session."""

_PIDS_EVENTS = (Path("/sys/fs/cgroup/pids.events"), Path("/sys/fs/cgroup/pids/pids.events"))


def processes() -> dict[int, Stat]:
    """Every process in /proc but the agent itself, by pid."""
    found: dict[int, Stat] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (me, 1):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) < 4:
            continue
        found[int(name)] = (fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))
    return found


def tree(leader: int, table: dict[int, Stat] | None = None) -> dict[int, str]:
    """The command's processes (see the module's docstring) with their state letters."""
    table = processes() if table is None else table
    members = {pid for pid, (_, _, group, session) in table.items() if leader in (group, session)}
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = [*members, leader]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in members:
                members.add(child)
                stack.append(child)
    return {pid: table[pid][0] for pid in members}


def _signal(leader: int, pids: dict[int, str], signum: int) -> None:
    # The group at once first: the kernel delivers a group's signal to a child forked
    # meanwhile too. Then one by one what left the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signum)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def _freeze(leader: int, until: float) -> dict[int, str]:
    """Stop the tree until none of it runs (or `until`); what it is then."""
    while True:
        members = tree(leader)
        running = {pid: s for pid, s in members.items() if s not in ("T", "t", "Z", "X")}
        if not running or time.monotonic() >= until:
            return members
        _signal(leader, running, signal.SIGSTOP)
        await asyncio.sleep(0)


async def end_tree(leader: int, seconds: float) -> bool:
    """Freeze then kill the command's tree, round after round, until none of it is left in
    /proc; False if some is still there after `seconds` (a parent that does not reap, a
    process stuck in the kernel)."""
    deadline = time.monotonic() + seconds
    while True:
        members = tree(leader)
        if not members:
            return True
        if time.monotonic() >= deadline:
            return False
        if any(state not in ("Z", "X") for state in members.values()):
            until = min(deadline, time.monotonic() + FREEZE_SECONDS)
            frozen = await _freeze(leader, until)
            _signal(
                leader, {p: s for p, s in frozen.items() if s not in ("Z", "X")}, signal.SIGKILL
            )
        await asyncio.sleep(POLL_SECONDS)


def pids_limit_hits() -> int | None:
    """How often a fork in the sandbox failed for its pids limit (the cgroup's `pids.events`);
    None where the count is not to be had (gVisor shows no cgroups)."""
    for source in _PIDS_EVENTS:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit():
                return int(value)
    return None
