"""Python SDK for Insien sandboxes: `Sandbox` (blocking) and `AsyncSandbox` (trio)."""

from __future__ import annotations

from ._async import AsyncSandbox as AsyncSandbox
from ._errors import APIError as APIError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectError as ConnectError
from ._errors import InsienError as InsienError
from ._errors import NotFoundError as NotFoundError
from ._errors import RPCError as RPCError
from ._errors import SandboxClosedError as SandboxClosedError
from ._errors import UnavailableError as UnavailableError
from ._sync import Sandbox as Sandbox
from ._types import CommandResult as CommandResult

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandResult",
    "ConnectError",
    "InsienError",
    "NotFoundError",
    "RPCError",
    "Sandbox",
    "SandboxClosedError",
    "UnavailableError",
    "__version__",
]
