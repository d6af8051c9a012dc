"""How fast creates come, per warm pool: what the pool sizes itself by.

The measure is the most creates that arrived within any sixth of the window (ten seconds of
the default minute). A burst of 30 creates sets it to 30 for the window: the pool grows to
meet the next such burst, and shrinks back once a window passes without one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
BUCKETS = 6


class Demand:
    """Create attempts (taken from the pool or not) for one pool, counted in time buckets."""

    def __init__(self, clock: Callable[[], float], window: float = WINDOW_SECONDS) -> None:
        self._clock = clock
        self._bucket_seconds = window / BUCKETS
        self._buckets: deque[tuple[int, int]] = deque()  # (bucket number, creates in it)

    def record(self) -> None:
        bucket = int(self._clock() // self._bucket_seconds)
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1] = (bucket, self._buckets[-1][1] + 1)
        else:
            self._buckets.append((bucket, 1))
        self._forget_old(bucket)

    def peak(self) -> int:
        """The most creates in one bucket within the window (0 when there were none)."""
        self._forget_old(int(self._clock() // self._bucket_seconds))
        return max((count for _, count in self._buckets), default=0)

    def _forget_old(self, now_bucket: int) -> None:
        oldest = now_bucket - BUCKETS
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()
