"""The MCP server's registry of open sandboxes stays bounded: connections to sandboxes made
elsewhere are let go least recently used first; sandboxes it made itself are never let go by
that (their end is the session's)."""

from __future__ import annotations

from typing import Any, cast

import anyio

from insien_sandbox.cli._mcp_server import MAX_BORROWED, Held, Registry


def test_borrowed_sandboxes_are_bounded_least_recently_used_first() -> None:
    registry = Registry(api_key="k", base_url="http://127.0.0.1:9", tasks=cast(Any, None))
    owned = {f"mine-{n}": Held(cast(Any, None), True, "s", anyio.Event()) for n in range(3)}
    borrowed = {
        f"other-{n}": Held(cast(Any, None), False, "s", anyio.Event())
        for n in range(MAX_BORROWED + 5)
    }
    registry.held.update(owned)
    registry.held.update(borrowed)
    registry.trim()
    assert set(owned) <= set(registry.held)
    assert not any(held.done.is_set() for held in owned.values())
    gone = [sandbox_id for sandbox_id in borrowed if sandbox_id not in registry.held]
    assert gone == [f"other-{n}" for n in range(5)]  # the oldest five
    assert all(borrowed[sandbox_id].done.is_set() for sandbox_id in gone)
    assert sum(1 for held in registry.held.values() if not held.owned) == MAX_BORROWED
