"""The agent's stderr in the server's log, rate-limited: it is container output too, and a
flood must not flood the log."""

from __future__ import annotations

import logging

import trio

from .lines import OversizeLine

STDERR_LINE_MAX = 16 * 1024
STDERR_LINES_PER_SECOND = 50


class AgentStderr:
    """Logs at most STDERR_LINES_PER_SECOND lines a second, and how many it left out."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self._log = log
        self._name = name
        self._window_start = -1e9
        self._lines = 0
        self._dropped = 0

    def line(self, line: bytes | OversizeLine) -> None:
        now = trio.current_time()
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
            self._log.info("%s agent: %s", self._name, line[:2048].decode(errors="replace"))
