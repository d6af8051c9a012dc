"""`insien sandbox …`, `insien volume …`, `insien secret …` and `insien mcp`: a terminal and
an MCP server for Insien sandboxes, volumes and secrets.

Needs the SDK's `cli` extra (click and rich; `mcp` for the MCP server). The server's `insien`
command mounts these; with only the SDK installed, `insien-client` offers the same commands.
"""

from __future__ import annotations

from ._app import client as client
from ._app import main as main
from ._app import sandbox as sandbox
from ._mcp_command import mcp as mcp
from ._secrets import secret as secret
from ._volumes import volume as volume

__all__ = ["client", "main", "mcp", "sandbox", "secret", "volume"]
