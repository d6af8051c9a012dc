"""The agent's stderr in the server's log, rate-limited: it is container output too, and a
flood must not flood the log. The last lines are kept (bounded) for the sandbox's logs route."""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime

import trio

from .lines import OversizeLine

STDERR_LINE_MAX = 16 * 1024
STDERR_LINES_PER_SECOND = 50
KEPT_LINES = 200
KEPT_LINE_BYTES = 2048


class AgentStderr:
    """Logs at most STDERR_LINES_PER_SECOND lines a second, and how many it left out."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self._log = log
        self._name = name
        self._window_start = -1e9
        self._lines = 0
        self._dropped = 0
        self._kept: deque[tuple[str, str]] = deque(maxlen=KEPT_LINES)

    def recent(self) -> list[tuple[str, str]]:
        """The last lines (at most KEPT_LINES, each cut to KEPT_LINE_BYTES) with their times."""
        return list(self._kept)

    def line(self, line: bytes | OversizeLine) -> None:
        now = trio.current_time()
        text = (
            f"<{line.size} byte line>"
            if isinstance(line, OversizeLine)
            else line[:KEPT_LINE_BYTES].decode(errors="replace")
        )
        self._kept.append((datetime.now(UTC).isoformat().replace("+00:00", "Z"), text))
        if now - self._window_start >= 1.0:
            if self._dropped:
                self._log.info("%s agent: <%d lines not logged>", self._name, self._dropped)
            self._window_start, self._lines, self._dropped = now, 0, 0
        self._lines += 1
        if self._lines > STDERR_LINES_PER_SECOND:
            self._dropped += 1
        elif isinstance(line, OversizeLine):
            self._log.info("%s agent: <%d byte line dropped>", self._name, line.size)
        else:
            self._log.info("%s agent: %s", self._name, text)
