"""What a sandbox may use (CPU, memory, processes), and Docker-style sizes like `512m`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE = re.compile(r"^\s*([0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """Bytes from `536870912`, `512m`, `512MiB` or `1g`; units are binary, as Docker's are."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("a size is a number of bytes or a string like '512m'")
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size like '512m' or '2g'")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(size: int) -> str:
    """The shortest exact Docker-style spelling: 1073741824 -> `1g`."""
    for unit in ("t", "g", "m", "k"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


@dataclass(frozen=True)
class Resources:
    """Limits of one sandbox: CPUs (a quota, may be fractional), memory in bytes, processes."""

    cpus: float
    memory: int
    pids: int

    def within(self, ceiling: Resources) -> list[str]:
        """What exceeds `ceiling`, as messages; empty if everything fits."""
        problems = []
        if self.cpus > ceiling.cpus:
            problems.append(f"resources.cpu is at most {ceiling.cpus:g}")
        if self.memory > ceiling.memory:
            problems.append(f"resources.memory is at most {format_size(ceiling.memory)}")
        if self.pids > ceiling.pids:
            problems.append(f"resources.pids is at most {ceiling.pids}")
        return problems

    def capped(self, ceiling: Resources) -> Resources:
        return Resources(
            min(self.cpus, ceiling.cpus),
            min(self.memory, ceiling.memory),
            min(self.pids, ceiling.pids),
        )

    def info(self) -> dict[str, float | int]:
        return {"cpu": self.cpus, "memory": self.memory, "pids": self.pids}
