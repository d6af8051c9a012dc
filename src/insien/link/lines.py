"""Reassembling newline-delimited lines from pieces of a stream, with a bound on each line.

Lines split across reads at any byte; a line longer than allowed is dropped (up to its
newline) and reported once, so a hostile stream can never make the server hold more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class OversizeLine:
    """Stands in for a line that was longer than allowed and was therefore dropped."""

    size: int


class LineAssembler:
    """Reassembles newline-terminated lines, holding at most `max_line` bytes of a partial one.

    An over-long line is discarded up to its newline and reported once, as an OversizeLine.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._dropped: int | None = None  # bytes skipped of the current over-long line

    def feed(self, data: bytes) -> Iterator[bytes | OversizeLine]:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self.add(data[start:end])
            start = end + 1
            yield self.end_line()
        self.add(data[start:])

    def add(self, piece: bytes) -> None:
        """More of the current line (no newline in `piece`)."""
        if self._dropped is not None:
            self._dropped += len(piece)
        elif len(self._partial) + len(piece) > self.max_line:
            self._dropped = len(self._partial) + len(piece)
            self._partial.clear()
        else:
            self._partial += piece

    def end_line(self) -> bytes | OversizeLine:
        """The current line is complete (its newline came): the line, or what stood for it."""
        if self._dropped is not None:
            dropped, self._dropped = self._dropped, None
            return OversizeLine(dropped)
        line = bytes(self._partial)
        self._partial.clear()
        return line

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line currently held."""
        return len(self._partial)
