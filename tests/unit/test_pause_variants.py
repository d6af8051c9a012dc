"""Pausing without memory (E2B's `pause(mode="filesystem")`, `autoPauseMemory: false`) and
resuming on traffic (E2B's autoResume), in the core on the fake runtime under trio's MockClock.

A runtime with `Stoppable` stops the container (its files kept) and a resume boots it again:
a new agent, its env and the server's sealed notes sent again. A runtime without it (like
Kubernetes) refuses with NOT_SUPPORTED before anything reaches it. Only a frozen sandbox wakes
on traffic, and only when its options say so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
from trio.testing import MockClock

from insien.api.errors import api_error_for
from insien.protocol import ErrorCode
from insien.runtime.base import Stoppable
from insien.sandboxes.errors import NotSupported
from insien.sandboxes.sandbox import State
from tests.fake_runtime import FakeAgent, FakeRuntime, PausableFakeRuntime
from tests.unit.test_core_on_fake_runtime import (
    ADA,
    agent_of,
    options,
    running,
    settings,
    until,
)
from tests.unit.test_core_on_fake_runtime import wall_clock as wall_clock  # the fixture

pytestmark = pytest.mark.usefixtures("wall_clock")


class StoppableFakeRuntime(PausableFakeRuntime):
    """`PausableFakeRuntime` with `Stoppable`: a stop ends the container's process and the
    next `start` runs a new one (a new boot; what the container "kept" is its spec)."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    async def stop(self, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        container = self.container(container_id)
        container.process.exit()
        container.process = self.program(container.spec)
        self.stops += 1


async def test_a_pause_without_memory_stops_and_a_resume_boots_anew(
    autojump_clock: MockClock,
) -> None:
    runtime, config = StoppableFakeRuntime(), settings()
    assert isinstance(runtime, Stoppable)
    async with running(runtime, config) as core:
        box = await core.create(
            ADA, options(config, env={"GREETING": "hi"}, on_expiry="pause", auto_resume=True)
        )
        first = agent_of(runtime, box)
        await until(lambda: first.notes.get("onExpiry") == "pause")
        assert first.notes.get("autoResume") is True
        await core.pause(box.id, ADA, memory=False)
        assert box.state is State.PAUSED
        assert core.is_stopped(box)
        assert runtime.stops == 1
        assert first.exited
        assert not runtime.container(box.container_id).running
        await trio.sleep(5)  # the link closed by the stop does not end the sandbox
        assert box.state is State.PAUSED
        # traffic never wakes a stopped sandbox, whatever its options say (E2B's rule)
        assert not await core.resume_for_traffic(box)
        assert box.state is State.PAUSED

        await core.resume(box.id, ADA)
        assert core.get(box.id, ADA).state is State.RUNNING
        assert not core.is_stopped(box)
        second = agent_of(runtime, box)
        assert second is not first
        assert not second.exited
        assert second.env == {"GREETING": "hi"}  # the env first, as at create
        await until(lambda: second.notes.get("onExpiry") == "pause")  # sealed again
        assert (await box.link.call({"type": "ping"}))["type"] == "pong"
        await trio.sleep(2)
        assert core.get(box.id, ADA).state is State.RUNNING


async def test_a_frozen_sandbox_resumed_without_memory_is_booted_anew(
    autojump_clock: MockClock,
) -> None:
    """E2B's `connect(on_resume="reboot")`."""
    runtime, config = StoppableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config))
        first = agent_of(runtime, box)
        await core.pause(box.id, ADA)
        assert not core.is_stopped(box)
        assert runtime.stops == 0
        await core.resume(box.id, ADA, memory=False)
        assert core.get(box.id, ADA).state is State.RUNNING
        assert runtime.stops == 1
        assert agent_of(runtime, box) is not first
        assert (await box.link.call({"type": "ping"}))["type"] == "pong"


async def test_auto_pause_without_memory_at_the_end_of_life(autojump_clock: MockClock) -> None:
    runtime, config = StoppableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, timeout=2, on_expiry="stop"))
        await trio.sleep(3)
        assert box.state is State.PAUSED
        assert core.is_stopped(box)
        assert box.expires_at > datetime.now(UTC) + timedelta(seconds=3600)
        await core.resume(box.id, ADA)
        assert core.get(box.id, ADA).state is State.RUNNING
        assert isinstance(agent_of(runtime, box), FakeAgent)


async def test_traffic_resumes_a_frozen_sandbox_only_when_it_may(
    autojump_clock: MockClock,
) -> None:
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        waking = await core.create(ADA, options(config, on_expiry="pause", auto_resume=True))
        sleeping = await core.create(ADA, options(config, on_expiry="pause"))
        for box in (waking, sleeping):
            await core.pause(box.id, ADA)
        async with trio.open_nursery() as nursery:  # many requests at once wake it once
            for _ in range(5):
                nursery.start_soon(core.resume_for_traffic, waking)
        assert waking.state is State.RUNNING
        assert (await waking.link.call({"type": "ping"}))["type"] == "pong"
        assert not await core.resume_for_traffic(sleeping)
        assert sleeping.state is State.PAUSED
        assert await core.resume_for_traffic(waking)  # running already: nothing to do


@pytest.mark.parametrize("runtime_kind", [FakeRuntime, PausableFakeRuntime])
async def test_a_runtime_that_cannot_stop_refuses_a_pause_without_memory(
    autojump_clock: MockClock, runtime_kind: type[FakeRuntime]
) -> None:
    """Kubernetes has no `Stoppable` (a pod cannot be stopped and started again): 501
    NOT_SUPPORTED from the core, and the sandbox runs on untouched."""
    runtime, config = runtime_kind(), settings()
    assert not isinstance(runtime, Stoppable)
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config))
        with pytest.raises(NotSupported, match="without its memory is not available") as refused:
            await core.pause(box.id, ADA, memory=False)
        error = api_error_for(refused.value)
        assert (error.status, error.code) == (501, ErrorCode.NOT_SUPPORTED)
        assert box.state is State.RUNNING
        with pytest.raises(NotSupported):
            await core.create(ADA, options(config, on_expiry="stop"))
