"""A byte-counting gate: concurrent work that holds large buffers waits for room."""

from __future__ import annotations

import asyncio


class ByteGate:
    """At most `capacity` bytes held at once; a request larger than that waits for all of it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> int:
        """Wait until `size` bytes (capped at the capacity) fit; returns what was taken."""
        size = max(1, min(size, self.capacity))
        async with self._changed:
            await self._changed.wait_for(lambda: self.held + size <= self.capacity)
            self.held += size
        return size

    def release(self, size: int) -> None:
        self.held -= size
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
