"""What the core raises about where sandboxes run, for the fronts to answer: they import it
from here and never from `insien.runtime` (tests/unit/test_layers.py keeps it so).

`RuntimeFailure` and `ImageNotFound` are the runtime's own (a runtime raises them and knows
nothing above it); `NotSupported` is the core's answer for a capability the runtime lacks.
"""

from __future__ import annotations

from ..runtime.base import ImageNotFound, Runtime, RuntimeFailure

__all__ = ["ImageNotFound", "NotSupported", "RuntimeFailure", "not_supported"]


class NotSupported(Exception):
    """The runtime does not have this capability (Kubernetes: pause, snapshots); the core
    says so before calling the runtime, and retrying will not help (501 NOT_SUPPORTED)."""


def not_supported(runtime: Runtime, doing: str) -> NotSupported:
    """The refusal of `doing` ("pausing a sandbox") on this runtime."""
    return NotSupported(f"{doing} is not available on {runtime.name}")
