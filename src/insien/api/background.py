"""Tasks a front starts that outlive the request that started them (E2B's polled directory
watchers). The server runs `Background.run` beside hypercorn, in its own nursery, and closes it
on the way out; nothing here may be started before it runs or after it closed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class BackgroundClosed(Exception):
    """The server is not running its background nursery (starting, or shutting down)."""


class Background:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`nursery.start` in the background nursery: returns what `fn` reports as started, or
        raises what it raised before that."""
        if self._nursery is None:
            raise BackgroundClosed("the server is not accepting background work")
        return await self._nursery.start(fn, *args)

    def close(self) -> None:
        """Cancel every background task; `run` returns once they have ended."""
        self._scope.cancel()
