"""A command's exit code comes from the helper's report; a zombie in /proc is a last resort
(the kernel hides its status from the agent), never a race winner: seen once at the instant
the command exits, it must not stand in for the report that follows a moment later."""

from __future__ import annotations

import asyncio
import os

import pytest

from insien_agent import spawner
from insien_agent.spawner import SpawnedProcess, zombie_exit_code

CHECK_SECONDS = 0.05
"""The agent looks for a zombie once a second; the order of checks is what is tested, not
their spacing, so these tests look twenty times a second."""


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawner, "ZOMBIE_CHECK_SECONDS", CHECK_SECONDS)


async def _zombie() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # /proc shows 0, as it does to the agent for any zombie of the user
    while zombie_exit_code(pid) is None:  # noqa: ASYNC110 (polling /proc is the point)
        await asyncio.sleep(0.01)
    return pid


def test_the_helpers_report_wins_over_a_zombie_seen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> int:
        pid = await _zombie()
        loop = asyncio.get_running_loop()
        reported: asyncio.Future[int] = loop.create_future()
        checks = 0

        def check_then_report(seen: int) -> int | None:
            """The first check sees the zombie; the helper's report comes right after it,
            before a second check could."""
            nonlocal checks
            checks += 1
            if checks == 1:
                loop.call_soon(reported.set_result, 4)
            return zombie_exit_code(seen)

        monkeypatch.setattr(spawner, "zombie_exit_code", check_then_report)
        process = SpawnedProcess(
            pid, None, asyncio.StreamReader(), asyncio.StreamReader(), reported
        )
        try:
            return await asyncio.wait_for(process.wait(), 10)
        finally:
            os.waitpid(pid, 0)  # noqa: ASYNC222 (a zombie: reaped at once)
            assert checks == 1

    assert asyncio.run(scenario()) == 4


def test_a_zombie_the_helper_never_reports_ends_the_wait() -> None:
    async def scenario() -> int:
        pid = await _zombie()
        never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        process = SpawnedProcess(pid, None, asyncio.StreamReader(), asyncio.StreamReader(), never)
        try:
            return await asyncio.wait_for(process.wait(), 10)
        finally:
            os.waitpid(pid, 0)  # noqa: ASYNC222 (a zombie: reaped at once)

    assert asyncio.run(scenario()) == 0
