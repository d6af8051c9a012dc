"""How many processes the kernel's OOM killer has killed in this sandbox's memory cgroup.

A command killed by SIGKILL while this count went up was (almost certainly) killed for memory:
its result says `oom: true`. The count is read from the cgroup the container sees as its own
root: `memory.events` under cgroup v2, `memory.oom_control` under v1. Where neither exists
(gVisor, or no memory controller) the count is None and nothing is reported.
"""

from __future__ import annotations

from pathlib import Path

_SOURCES = (
    Path("/sys/fs/cgroup/memory.events"),
    Path("/sys/fs/cgroup/memory/memory.oom_control"),
)


def oom_kills() -> int | None:
    for source in _SOURCES:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None
