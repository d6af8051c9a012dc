"""`sandbox.files.watch(path)`: filesystem events under a directory, as they happen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from ._buffer import Buffer
from ._errors import RPCError, SandboxClosedError
from ._rpc import Message, check
from ._types import FilesystemEvent

if TYPE_CHECKING:
    from ._session import Session

EVENT_BUFFER = 4096
"""Events waiting for the caller to iterate; beyond it the watch stops reading, the server
stops granting credit, and the sandbox counts what it drops (`dropped`)."""


class WatchHandle:
    """A running watch: iterate it for `FilesystemEvent`s; `stop()` ends it."""

    def __init__(self, session: Session, message: Message) -> None:
        self._session = session
        self._message = message
        self._events = Buffer[FilesystemEvent](EVENT_BUFFER)
        self._scope = anyio.CancelScope()
        self._dropped = 0
        self._ended: str | None = None
        self._error: Exception | None = None

    @property
    def dropped(self) -> int:
        """Events the sandbox had to drop because they came faster than they were read."""
        return self._dropped

    @property
    def ended(self) -> str | None:
        """Why the watch ended by itself (its directory was removed), or None."""
        return self._ended

    async def _follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        connection = await self._session.connection()
        started = False
        with self._scope:
            try:
                async with connection.stream(self._message) as replies:
                    async for reply in replies:
                        kind = reply.get("type")
                        if kind == "watchStarted":
                            started = True
                            task_status.started()
                        elif kind == "fsEvents":
                            self._dropped += int(reply.get("dropped", 0))
                            for event in reply.get("events", []):
                                await self._events.put(FilesystemEvent.from_wire(event))
                        elif kind == "watchEnded":
                            self._ended = str(reply.get("reason") or "ended")
                            return
                        else:
                            check(reply)
                            return
            except (RPCError, SandboxClosedError) as exc:
                if not started:
                    raise
                self._error = exc
            finally:
                self._events.close()

    def __aiter__(self) -> AsyncIterator[FilesystemEvent]:
        return self._events

    async def stop(self) -> None:
        """End the watch (the sandbox stops watching); iteration then ends."""
        self._scope.cancel()
