"""The warm pool's measure of demand: creates in the busiest bucket of the last minute."""

from __future__ import annotations

from insien.sandboxes.demand import BUCKETS, WINDOW_SECONDS, Demand

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
