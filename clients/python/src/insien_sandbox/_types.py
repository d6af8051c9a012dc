"""Result types returned by the SDK."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced. `truncated` means output passed the server's cap."""

    stdout: str
    stderr: str
    exit_code: int
    signal: str | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0
