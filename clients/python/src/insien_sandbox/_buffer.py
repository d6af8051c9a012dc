"""A bounded FIFO between a handle's follower task and whoever reads the handle."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Buffer(Generic[T]):
    """Bounded, and holding nothing that needs closing: the reader of a command or watch
    handle may never come (anyio's memory streams warn when a receiver is left unclosed).

    One task puts (waiting, or refusing, when full), any task iterates; iteration ends once
    the buffer is closed and drained."""

    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque()
        self._size = size
        self._closed = False
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def put_nowait(self, item: T) -> bool:
        """Add the item unless the buffer is full (or closed); says whether it was added."""
        if self._closed or len(self._items) >= self._size:
            return False
        self._items.append(item)
        self._wake()
        return True

    async def put(self, item: T) -> None:
        """Add the item, waiting for room: a reader that stops reading slows the producer."""
        while not self._closed and len(self._items) >= self._size:
            await self._changed.wait()
        if not self._closed:
            self._items.append(item)
            self._wake()

    def close(self) -> None:
        """No more items: readers drain what is left, then their iteration ends."""
        self._closed = True
        self._wake()

    def __aiter__(self) -> Buffer[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            await self._changed.wait()
        item = self._items.popleft()
        self._wake()
        return item
