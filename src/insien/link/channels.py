"""Which request each binary channel of a link belongs to (docs/protocol.md, "Binary frames").

A channel lives until its request's final message, not merely until its client lets go, so
frames replayed after a restart still find their adopted or orphaned session request.
"""

from __future__ import annotations

from typing import Any

RequestKey = int | str


class ChannelTable:
    """Channel number <-> agent-side request id, both ways."""

    def __init__(self) -> None:
        self._owner: dict[int, RequestKey] = {}
        self._channel: dict[RequestKey, int] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def bind(self, channel: int, request_id: RequestKey) -> None:
        self._owner[channel] = request_id
        self._channel[request_id] = channel

    def owner(self, channel: int) -> RequestKey | None:
        return self._owner.get(channel)

    def forget(self, request_id: RequestKey) -> None:
        channel = self._channel.pop(request_id, None)
        if channel is not None:
            self._owner.pop(channel, None)

    def adopt(self, pairs: Any) -> None:
        """The `channels` of an agent's resume marker, `[[channel, request id], …]`; anything
        malformed in it (the agent is not trusted) is skipped."""
        for pair in pairs if isinstance(pairs, list) else []:
            if (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], int)
                and not isinstance(pair[0], bool)
                and isinstance(pair[1], (int, str))
            ):
                self.bind(pair[0], pair[1])

    def clear(self) -> None:
        self._owner.clear()
        self._channel.clear()
