"""The agent's decoder for JSON that user code can write: a code context's protocol pipe (a
cell can write to it) and the spawner helper's socket (the helper runs as the user).

Python's `json` recurses once per nesting level, so 200,000 `[` raise `RecursionError`, which
`except ValueError` does not catch: the task reading that pipe dies, and whoever waits on it
hangs. Here a line is refused with `JsonRefused` (a `ValueError`) when it is too large, is not
JSON, or nests too deeply. The server's equivalent is `insien.untrusted_json`; the agent is
standard library only and cannot import it.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
"""Deeper than any message of the agent's protocol, and far below Python's recursion limit
(which re-encoding the value, here and on the server, must stay under too)."""


class JsonRefused(ValueError):
    """A line refused: too large, not JSON, or nested too deeply (the message says which)."""

    def __init__(self, reason: str, *, bound: bool) -> None:
        super().__init__(reason)
        self.bound = bound
        """Whether the line broke a bound (size, depth) rather than not being JSON at all:
        where stray text is expected (a JS child writing on the kernel's stdout), only these
        are worth reporting."""


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The value of one JSON document that user code may have written, or `JsonRefused`."""
    if len(data) > max_bytes:
        raise JsonRefused(f"{len(data)} bytes, over the limit of {max_bytes}", bound=True)
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels", bound=True) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JsonRefused(f"not valid JSON ({type(exc).__name__})", bound=False) from None
    if too_deep(value, max_depth):
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels", bound=True)
    return value


_Node = list[Any] | dict[str, Any]


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether arrays or objects nest more than `max_depth` levels (`[]` is one); walked
    without recursion, stopping at the first excess."""
    if not isinstance(value, (list, dict)):
        return False
    pending: list[tuple[_Node, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (list, dict)):
                pending.append((child, depth + 1))
    return False
