"""Insien: self-hosted code sandboxes, driven over REST and a JSON RPC WebSocket."""

from __future__ import annotations

# The project's one version (first: the modules below read it). The SDK's pyproject and the
# agent's zip application take it from here.
__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings as Settings
    from .server import serve as serve

__all__ = ["Settings", "__version__", "serve"]


def __getattr__(name: str) -> Any:
    """`Settings` and `serve` load on first use, so the `insien` command starts fast."""
    if name == "Settings":
        from .config import Settings

        return Settings
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module 'insien' has no attribute {name!r}")
