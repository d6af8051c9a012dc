"""Insien: self-hosted code sandboxes, driven over REST and a JSON RPC WebSocket."""

from __future__ import annotations

# The project's one version (first: the modules below read it). The SDK's pyproject and the
# agent's zip application take it from here.
__version__ = "0.1.0"

from .config import Settings as Settings
from .server import serve as serve

__all__ = ["Settings", "__version__", "serve"]
