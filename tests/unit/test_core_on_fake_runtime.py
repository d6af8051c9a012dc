"""The core (manager, launcher, warm pool, reaper, pause, recovery, quotas) on the in-memory
runtime of tests/fake_runtime.py, under trio's MockClock: timeouts of seconds pass at once,
and no test needs Docker.

Lifetimes are wall-clock datetimes, so `wall_clock` makes the core's `datetime.now` follow
trio's clock for the length of a test. Several tests are the MockClock twins of
tests/e2e/test_lifecycle_v2.py (named in their docstrings): the same behaviour, the same
margins, without real sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from insien.api.errors import api_error_for
from insien.config import Settings
from insien.protocol import ErrorCode
from insien.runtime.base import LABEL_OWNER, AgentChannel, ContainerSpec, Pausable, StreamKind
from insien.sandboxes import launcher, manager, pool, recovery, sandbox
from insien.sandboxes.errors import NotSupported
from insien.sandboxes.launcher import SandboxStartError
from insien.sandboxes.manager import SandboxManager
from insien.sandboxes.provenance import Sealer
from insien.sandboxes.sandbox import EndReason, Sandbox, SandboxOptions, State
from insien.tenancy.quotas import QuotaExceeded
from insien.tenancy.tenants import Plan, Tenant
from tests.channel_conformance import check_agent_channel
from tests.fake_runtime import (
    EchoProcess,
    FakeAgent,
    FakeChannel,
    FakeProcess,
    FakeRuntime,
    PausableFakeRuntime,
)

KEY = b"fake-runtime-test-key-0123456789"
ADA = Tenant("ada")


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"instance": "fake", "pool_size": 0, **overrides}
    return Settings(_env_file=None, **values)


def options(config: Settings, **overrides: Any) -> SandboxOptions:
    values: dict[str, Any] = {
        "template": config.agent_image,
        "timeout": 3600.0,
        "idle_timeout": None,
        "resources": config.default_resources,
        **overrides,
    }
    return SandboxOptions(**values)


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's `datetime.now` moves with trio's clock (MockClock's jumps included)."""
    start = datetime.now(UTC)
    base: list[float] = []

    class TrioDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> TrioDatetime:
            if not base:
                base.append(trio.current_time())
            moment = start + timedelta(seconds=trio.current_time() - base[0])
            return cls.fromtimestamp(moment.timestamp(), tz)

    for module in (manager, sandbox, launcher, pool, recovery):
        monkeypatch.setattr(module, "datetime", TrioDatetime)


@asynccontextmanager
async def running(runtime: FakeRuntime, config: Settings) -> AsyncIterator[SandboxManager]:
    async with SandboxManager.open(runtime, config, Sealer(KEY)) as opened:
        yield opened


def agent_of(runtime: FakeRuntime, box: Sandbox) -> FakeAgent:
    process = runtime.container(box.container_id).process
    assert isinstance(process, FakeAgent)
    return process


async def ended_at(box: Sandbox) -> float:
    with trio.fail_after(60):
        await box.ended.wait()
    return trio.current_time()


async def until(condition: Callable[[], bool], *, every: float = 0.1) -> None:
    """Poll (on trio's clock) until `condition` holds, for at most a minute."""
    with trio.fail_after(60):
        while not condition():  # noqa: ASYNC110 (polling the core's state, as a client does)
            await trio.sleep(every)


async def removed(runtime: FakeRuntime, box: Sandbox) -> None:
    """A sandbox reads as ended as soon as it ends; its container's removal follows."""
    await until(lambda: box.container_id not in runtime.containers, every=0.01)


def frozen(runtime: FakeRuntime, box: Sandbox) -> bool:
    return runtime.container(box.container_id).process.paused


pytestmark = pytest.mark.usefixtures("wall_clock")


# -- the reaper ------------------------------------------------------------------------------


async def test_lifetime_expiry_and_keepalive(autojump_clock: MockClock) -> None:
    """test_lifecycle_v2.test_lifetime_expiry_and_keepalive: a keepalive moves the end."""
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, timeout=2))
        agent = agent_of(runtime, box)
        start = trio.current_time()
        assert core.keepalive(box.id, ADA, 6).state is State.RUNNING
        await trio.sleep(3)  # past the original lifetime, within the extended one
        assert box.state is State.RUNNING
        assert "expiresAt" in agent.notes  # a restart keeps the new end
        assert 6 <= await ended_at(box) - start <= 6.6
        assert box.end_reason is EndReason.EXPIRED
        await removed(runtime, box)


async def test_idle_expiry_and_what_counts_as_activity(autojump_clock: MockClock) -> None:
    """test_lifecycle_v2.test_idle_expiry_and_what_counts_as_activity, with its margins."""
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, idle_timeout=4))
        box.clients += 1  # a connected client keeps it alive however long it stays quiet
        await trio.sleep(5.5)
        assert box.state is State.RUNNING
        box.clients -= 1
        box.touch()  # what the WebSocket's end does
        await trio.sleep(3)
        box.touch()  # using it through the API
        used_at = trio.current_time()
        await trio.sleep(3)
        assert box.state is State.RUNNING
        # looking at it does not count: polled four times a second, it still ends on time
        await until(
            lambda: core.get(box.id, ADA, include_ended=True).state is State.ENDED, every=0.25
        )
        idle_for = trio.current_time() - used_at
        assert box.end_reason is EndReason.IDLE
        assert 4 <= idle_for <= 4.6, idle_for
        await removed(runtime, box)


async def test_pause_and_resume(autojump_clock: MockClock) -> None:
    """test_lifecycle_v2.test_pause_and_resume: a paused sandbox never goes idle."""
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, idle_timeout=1))
        assert (await core.pause(box.id, ADA)).state is State.PAUSED
        assert frozen(runtime, box)
        await trio.sleep(2.5)  # longer than its idle timeout
        assert box.state is State.PAUSED
        with trio.move_on_after(1):  # a frozen agent answers nothing
            await box.link.call({"type": "ping"})
            pytest.fail("a paused agent answered")
        assert (await core.resume(box.id, ADA)).state is State.RUNNING
        assert not frozen(runtime, box)
        assert (await box.link.call({"type": "ping"}))["type"] == "pong"


async def test_auto_pause_at_the_end_of_life(autojump_clock: MockClock) -> None:
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, timeout=2, on_expiry="pause"))
        await trio.sleep(3)
        assert box.state is State.PAUSED
        assert frozen(runtime, box)
        assert box.expires_at > datetime.now(UTC) + timedelta(seconds=3600)


async def test_what_the_runtime_cannot_do_is_not_supported(autojump_clock: MockClock) -> None:
    """A runtime without `Pausable` (like Kubernetes): pause, auto-pause and snapshots answer
    501 NOT_SUPPORTED from the core, before anything reaches the runtime."""
    runtime, config = FakeRuntime(), settings()
    assert not isinstance(runtime, Pausable)
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config))
        with pytest.raises(NotSupported, match="pausing a sandbox is not available on Fake"):
            await core.pause(box.id, ADA)
        assert box.state is State.RUNNING
        with pytest.raises(NotSupported) as refused:
            await core.create(ADA, options(config, on_expiry="pause"))
        error = api_error_for(refused.value)
        assert (error.status, error.code) == (501, ErrorCode.NOT_SUPPORTED)
        with pytest.raises(NotSupported, match="taking a snapshot"):
            await core.snapshot(box.id, ADA)
        assert await core.snapshots.list(ADA) == []
        assert await core.launcher.image_present("anything:latest")  # cannot tell: yes
        assert (await core.resume(box.id, ADA)).state is State.RUNNING  # nothing to resume


async def test_an_agent_that_exits_and_a_container_removed_behind_the_servers_back(
    autojump_clock: MockClock,
) -> None:
    """test_lifecycle_v2's test_agent_killed_inside_its_container and
    test_container_removed_behind_the_servers_back: the runtime says why it ended."""
    runtime, config = PausableFakeRuntime(), settings()
    async with running(runtime, config) as core:
        exited = await core.create(ADA, options(config))
        gone = await core.create(ADA, options(config))
        killed = await core.create(ADA, options(config))
        runtime.container(exited.container_id).process.exit()
        runtime.containers.pop(gone.container_id).process.exit()
        runtime.container(killed.container_id).oom_killed = True
        runtime.container(killed.container_id).process.exit()
        for box in (exited, gone, killed):
            await ended_at(box)
            await removed(runtime, box)
        assert exited.end_reason is EndReason.AGENT_EXITED
        assert gone.end_reason is EndReason.CONTAINER_GONE
        assert killed.end_reason is EndReason.OOM
        assert runtime.containers == {}


# -- the launcher and the pool ---------------------------------------------------------------


async def test_a_create_sends_env_first_and_an_agent_that_never_says_hello_is_removed(
    autojump_clock: MockClock,
) -> None:
    runtime, config = FakeRuntime(), settings(ready_timeout=30)
    async with running(runtime, config) as core:
        box = await core.create(ADA, options(config, env={"GREETING": "hello"}))
        agent = agent_of(runtime, box)
        assert agent.received[0]["type"] == "env"  # before anything else reaches the agent
        assert agent.env == {"GREETING": "hello"}

        runtime.program = lambda _spec: FakeAgent(hello=False)
        start = trio.current_time()
        with pytest.raises(SandboxStartError, match="no ready message within 30"):
            await core.create(ADA, options(config))
        assert 30 <= trio.current_time() - start < 31
        assert list(runtime.containers) == [box.container_id]  # the silent one is removed


async def test_the_warm_pool_hands_over_and_refills(autojump_clock: MockClock) -> None:
    runtime, config = FakeRuntime(), settings(pool_size=2, pool_max=2)
    sealer = Sealer(KEY)
    async with running(runtime, config) as core:
        await until(lambda: len(core.pool.members()) == 2)
        members = {member.id for member in core.pool.members()}
        box = await core.create(ADA, options(config, metadata={"job": "7"}))
        assert box.id in members
        assert (box.owner, box.options.metadata) == ("ada", {"job": "7"})
        container = runtime.container(box.container_id)
        # renamed in the background
        await until(lambda: container.name == sealer.claimed_name(box.id, "ada"))
        assert any(m["type"] == "note" for m in agent_of(runtime, box).received)
        await until(lambda: len(core.pool.members()) == 2)  # and the pool fills up again
        assert box.id not in {member.id for member in core.pool.members()}
        assert len(runtime.containers) == 3


# -- quotas ----------------------------------------------------------------------------------


async def test_quotas_at_create(autojump_clock: MockClock) -> None:
    runtime, config = FakeRuntime(), settings()
    capped = Tenant("capped", Plan(max_sandboxes=1))
    hasty = Tenant("hasty", Plan(create_rate=60, create_burst=1))
    async with running(runtime, config) as core:
        first = await core.create(capped, options(config))
        with pytest.raises(QuotaExceeded) as refused:
            await core.create(capped, options(config))
        assert refused.value.code is ErrorCode.QUOTA_EXCEEDED
        await core.destroy(first.id, capped)
        await core.create(capped, options(config))

        await core.create(hasty, options(config))
        with pytest.raises(QuotaExceeded) as refused:
            await core.create(hasty, options(config))
        assert refused.value.code is ErrorCode.RATE_LIMITED
        await trio.sleep(1.0)  # one create a second
        await core.create(hasty, options(config))
        assert len(runtime.containers) == 3


# -- recovery --------------------------------------------------------------------------------


async def test_a_second_manager_recovers_the_first_ones_sandboxes(
    autojump_clock: MockClock,
) -> None:
    """A restart: the first manager lets go, a second one over the same containers rebuilds
    the registry from sealed labels and notes, re-attaches, and refuses what is not sealed."""
    runtime, config = PausableFakeRuntime(), settings(pool_size=1, pool_max=1)
    async with running(runtime, config) as first:
        kept = await first.create(ADA, options(config, metadata={"n": "1"}))
        first.keepalive(kept.id, ADA, 7200)
        paused = await first.create(ADA, options(config))
        await first.pause(paused.id, ADA)
        forged = await first.create(ADA, options(config))
        died = await first.create(ADA, options(config))
        await until(lambda: len(first.pool.members()) == 1)
        await trio.sleep(1)  # the keepalive's note reaches the agent
        expires_at = kept.expires_at
    assert kept.state is State.RUNNING  # let go of, not ended
    runtime.container(forged.container_id).labels[LABEL_OWNER] = "mallory"
    runtime.container(died.container_id).process.exit()

    async with running(runtime, config) as second:
        assert second.recovery.outcomes == {"recovered": 2, "pooled": 1, "refused": 1, "ended": 1}
        again = second.get(kept.id, ADA)
        assert again is not kept
        assert (again.state, again.options.metadata) == (State.RUNNING, {"n": "1"})
        assert again.expires_at == expires_at  # from the sealed note, not the label
        assert (await again.link.call({"type": "ping"}))["type"] == "pong"
        still_paused = second.get(paused.id, ADA)
        assert still_paused.state is State.PAUSED
        assert frozen(runtime, still_paused)  # thawed for the resume, then frozen again
        ended = second.get(died.id, ADA, include_ended=True)
        assert ended.end_reason is EndReason.AGENT_EXITED
        assert forged.container_id not in runtime.containers
        assert died.container_id not in runtime.containers


# -- the agent channel -----------------------------------------------------------------------


def echo_spec() -> ContainerSpec:
    return ContainerSpec(
        sandbox_id="echo", image="echo", labels={}, python="/usr/bin/python3", capabilities=()
    )


@asynccontextmanager
async def fake_echo_channel() -> AsyncIterator[AgentChannel]:
    runtime = FakeRuntime(program=lambda _spec: EchoProcess())
    container_id = await runtime.create(echo_spec(), b"")
    channel = await runtime.attach(container_id)
    await runtime.start(container_id)
    try:
        yield channel
    finally:
        await channel.aclose()
        await runtime.remove(container_id)


async def test_the_fake_runtimes_channel_conforms(autojump_clock: MockClock) -> None:
    await check_agent_channel(fake_echo_channel)


class MergedStreams:
    """A channel that reports stderr as stdout (what a TTY would do): not conformant."""

    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel

    async def send_all(self, data: bytes) -> None:
        await self._channel.send_all(data)

    async def receive(self) -> tuple[StreamKind, bytes] | None:
        piece = await self._channel.receive()
        return None if piece is None else (StreamKind.STDOUT, piece[1])

    async def aclose(self) -> None:
        await self._channel.aclose()


async def test_the_conformance_check_catches_a_channel_that_merges_streams(
    autojump_clock: MockClock,
) -> None:
    @asynccontextmanager
    async def merged() -> AsyncIterator[AgentChannel]:
        process: FakeProcess = EchoProcess()
        channel = process.connect()
        process.start()
        yield MergedStreams(channel)

    with pytest.raises(AssertionError, match="on stderr"):
        await check_agent_channel(merged)
