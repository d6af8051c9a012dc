"""Generated from docs/protocol.schema.json by `python -m insien.protocol_spec`: do not edit."""

from __future__ import annotations

EVENT_TYPES = frozenset(
    {
        "attachResponse",
        "codeOutput",
        "codeResult",
        "data",
        "fsEvents",
        "output",
        "spawnResponse",
        "watchStarted",
    }
)
"""Messages that answer a request without ending it; every other type is final."""
