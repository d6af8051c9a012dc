"""Ending a command's whole process tree (issue 27): the group, the session and live
descendants that left both are frozen and killed, and the end waits for zombies too (the pids
limit counts them). Real processes on this machine, no Docker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from insien_agent import ending


def start(script: str) -> subprocess.Popen[bytes]:
    """A command as the agent starts one: leading its own session and process group."""
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def until(predicate: object, seconds: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def end(command: subprocess.Popen[bytes], seconds: float = 10) -> bool:
    """end_tree on the command, reaping its leader meanwhile as the spawner helper would."""

    async def ending_while_reaping() -> bool:
        reaper = asyncio.create_task(asyncio.to_thread(command.wait))
        ended = await ending.end_tree(command.pid, seconds)
        await reaper
        return ended

    return asyncio.run(ending_while_reaping())


OWN_GROUP = "python3 -c 'import os, time; os.setpgid(0, 0); time.sleep(100)'"


def test_the_tree_is_the_group_the_session_and_what_left_them_under_a_live_parent() -> None:
    # One child in a process group of its own (same session), one in a session of its own
    # (found through its living parent).
    command = start(f"{OWN_GROUP} & setsid sleep 100 & sleep 100 & wait")

    def groups_and_sessions() -> tuple[int, int]:
        table = ending.processes()
        stats = [table[pid] for pid in ending.tree(command.pid, table)]
        return len({stat[2] for stat in stats}), len({stat[3] for stat in stats})

    try:
        until(lambda: groups_and_sessions() == (3, 2))
        members = ending.tree(command.pid)
        assert command.pid in members
        assert os.getpid() not in members
    finally:
        assert end(command)
    assert not any(alive(pid) for pid in members)


def test_a_forking_tree_ends_and_none_of_it_is_left() -> None:
    # Sleepers started as fast as the shell can, while it is being ended.
    command = start("i=0; while [ $i -lt 300 ]; do sleep 100 & i=$((i+1)); done; wait")
    until(lambda: len(ending.tree(command.pid)) >= 50)
    members = ending.tree(command.pid)
    assert end(command)
    assert ending.tree(command.pid) == {}
    assert not any(alive(pid) for pid in members)
    assert command.returncode is not None


def test_an_unreaped_zombie_keeps_the_tree_from_having_ended() -> None:
    command = start("exec sleep 100")
    until(lambda: bool(ending.tree(command.pid)))
    # Killed, but not waited for: a zombie still takes its place in the pids limit.
    assert not asyncio.run(ending.end_tree(command.pid, 0.3))
    assert ending.tree(command.pid) == {command.pid: "Z"}
    command.wait()
    assert asyncio.run(ending.end_tree(command.pid, 1))


def test_pids_limit_hits_are_read_from_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "pids.events"
    monkeypatch.setattr(ending, "_PIDS_EVENTS", (tmp_path / "absent", events))
    assert ending.pids_limit_hits() is None
    events.write_text("max 42\n")
    assert ending.pids_limit_hits() == 42
