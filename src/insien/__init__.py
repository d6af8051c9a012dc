"""Insien: self-hosted code sandboxes, driven over REST and a JSON RPC WebSocket."""

from __future__ import annotations

from .config import Settings as Settings
from .server import serve as serve

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "serve"]
