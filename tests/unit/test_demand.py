"""The warm pool's measure of demand (creates in the busiest bucket of the last minute) and how
the pool sizes itself by it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from trio.testing import MockClock

from insien.config import Settings
from insien.sandboxes import pool as pool_module
from insien.sandboxes.demand import BUCKETS, WINDOW_SECONDS, Demand
from insien.sandboxes.pool import Profile, WarmPool
from insien.sandboxes.sandbox import Sandbox
from insien.tenancy.resources import Resources

BUCKET_SECONDS = WINDOW_SECONDS / BUCKETS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_sets_the_peak_until_the_window_passes() -> None:
    clock = Clock()
    demand = Demand(clock)
    assert demand.peak() == 0
    for _ in range(30):
        demand.record()
    clock.now += BUCKET_SECONDS
    for _ in range(3):
        demand.record()
    assert demand.peak() == 30
    clock.now += WINDOW_SECONDS - BUCKET_SECONDS - 1
    assert demand.peak() == 30
    clock.now += 2  # the burst's bucket left the window; the later three are still in it
    assert demand.peak() == 3
    clock.now += WINDOW_SECONDS
    assert demand.peak() == 0


def test_a_steady_trickle_counts_per_bucket_not_in_total() -> None:
    clock = Clock()
    demand = Demand(clock)
    for _ in range(60):
        demand.record()
        clock.now += 1.0
    assert demand.peak() == int(BUCKET_SECONDS)


def test_a_shorter_window_forgets_sooner() -> None:
    clock = Clock()
    demand = Demand(clock, window=6.0)
    for _ in range(5):
        demand.record()
    assert demand.peak() == 5
    clock.now += 6.5
    assert demand.peak() == 0


class Ready:
    """A pooled sandbox as the pool's sizing sees it: its link is up."""

    def __init__(self) -> None:
        self.link = SimpleNamespace(connected=True, closed=trio.Event())


def pool_of(size: int, most: int, window: float) -> tuple[WarmPool, Profile]:
    profile = Profile("insien-sandbox:latest", Resources(1, 256 * 2**20, 128), size, most)
    unused: Any = None  # sizing uses neither the runtime, the seal, nor the launcher
    pool = WarmPool(
        [profile],
        runtime=unused,
        settings=Settings(pool_demand_window=window),
        sealer=unused,
        launcher=unused,
        discard=unused,
    )
    return pool, profile


def test_the_pool_grows_to_a_burst_and_shrinks_back_one_per_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sizing behind tests/e2e/test_pool.py's burst test, on trio's fake clock: five creates
    at once set the target to five for the window, refills are asked for the whole shortfall,
    and once the window passes the surplus goes one sandbox per check, back to the size."""
    monkeypatch.setattr(pool_module, "available_memory", lambda: None)  # memory is no bound

    async def scenario() -> None:
        pool, profile = pool_of(size=1, most=5, window=6.0)
        assert pool.target(profile) == 1
        assert pool.add(profile, cast(Sandbox, Ready()))
        assert not pool.add(profile, cast(Sandbox, Ready())), "past the target"
        taken = [pool.take(profile) for _ in range(5)]
        assert taken[0] is not None
        assert taken[1:] == [None] * 4  # the rest start cold
        assert pool.target(profile) == 5
        assert pool.shortfall(profile) == 5
        pool.starting(profile, +5)
        assert pool.shortfall(profile) == 0, "starting ones count: no more are asked for"
        await trio.sleep(3)  # (fake clock) the refills finish within the window and are all kept
        for _ in range(5):
            pool.starting(profile, -1)
            assert pool.add(profile, cast(Sandbox, Ready()))
        assert pool.counts() == {profile.key: 5}
        assert pool.surplus(profile) is None
        await trio.sleep(6.0)  # (fake clock) the burst's bucket has left the window
        assert pool.target(profile) == 1
        removed = 0
        while pool.surplus(profile) is not None:  # keep_filled asks once per check
            removed += 1
        assert removed == 4
        assert pool.counts() == {profile.key: 1}
        assert not pool.add(profile, cast(Sandbox, Ready())), "a late refill is refused"

    trio.run(scenario, clock=MockClock(autojump_threshold=0))


def test_the_pool_never_grows_past_its_max() -> None:
    async def scenario() -> None:
        pool, profile = pool_of(size=1, most=3, window=6.0)
        for _ in range(10):
            pool.take(profile)
        assert pool.target(profile) == 3
        assert pool.shortfall(profile) == 3

    trio.run(scenario, clock=MockClock(autojump_threshold=0))
