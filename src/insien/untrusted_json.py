"""The one decoder for JSON the server did not write: client bodies and frames on every front
(the WebSocket protocol, REST, E2B's envd Connect calls and code interpreter).

Python's `json` recurses once per nesting level, so a body of 200,000 `[` raises
`RecursionError`, which no `except ValueError` catches: a 500 with a traceback, or a dead
task. Here a document is refused with `JsonRefused` (a `ValueError`) when it is larger than its
caller allows, is not JSON, or nests deeper than `MAX_DEPTH`, so that each front answers its
own structured error (BAD_REQUEST, Connect's `invalid_argument`, a 400) and nothing else.

It lives at the package's top level, beside `protocol`, because both the API fronts (`api/`)
and the agent link (`link/`) read untrusted JSON and neither should import the other for it.
The agent (standard library only, its own package) has its equivalent in
`insien_agent.untrusted_json`.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
"""Far more than any request of any front nests (an E2B process start is 3 levels deep), and
far fewer than Python's recursion limit, which every later `json.dumps` or validation of the
value must stay under too."""


class JsonRefused(ValueError):
    """A document refused: too large, not JSON, or nested too deeply (the message says which,
    in words fit to send back to the client)."""


def loads(
    data: bytes | bytearray | str, *, max_bytes: int | None, max_depth: int = MAX_DEPTH
) -> Any:
    """The value of one JSON document from a client, or `JsonRefused`.

    `max_bytes` bounds the document's length (characters for `str`); None only where the
    transport has bounded it already (hypercorn's `websocket_max_message_size`)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonRefused(f"the JSON document is over the limit of {max_bytes} bytes")
    try:
        value = json.loads(data)
    except RecursionError:  # deeper than the interpreter's stack allows: surely over max_depth
        raise JsonRefused(f"the JSON nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise JsonRefused(f"the body is not valid JSON: {_reason(exc)}") from None
    if too_deep(value, max_depth):
        raise JsonRefused(f"the JSON nests deeper than {max_depth} levels")
    return value


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether a decoded value has arrays or objects nested more than `max_depth` levels
    (`[]` is one level, `[[]]` two); walked without recursion, stopping at the first excess."""
    if not isinstance(value, (list, dict)):
        return False
    pending: list[tuple[list[Any] | dict[str, Any], int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (list, dict)):
                pending.append((child, depth + 1))
    return False


def _reason(exc: ValueError) -> str:
    """Where and why, without echoing the document (it can be megabytes)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start}"
    return str(exc)[:200]
