"""Python SDK for Insien sandboxes: `Sandbox` (blocking) and `AsyncSandbox` (trio)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from ._async import AsyncSandbox as AsyncSandbox
from ._code import CodeContext as CodeContext
from ._code import Execution as Execution
from ._code import ExecutionError as ExecutionError
from ._code import Result as Result
from ._commands import CommandHandle as AsyncCommandHandle
from ._errors import APIError as APIError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectError as ConnectError
from ._errors import InsienError as InsienError
from ._errors import NotFoundError as NotFoundError
from ._errors import NotSupportedError as NotSupportedError
from ._errors import RateLimitError as RateLimitError
from ._errors import RPCError as RPCError
from ._errors import SandboxClosedError as SandboxClosedError
from ._errors import UnavailableError as UnavailableError
from ._secrets import AsyncSecrets as AsyncSecrets
from ._secrets import SecretBinding as SecretBinding
from ._secrets import SecretInfo as SecretInfo
from ._secrets import Secrets as Secrets
from ._sync import CommandHandle as CommandHandle
from ._sync import Sandbox as Sandbox
from ._sync import WatchHandle as WatchHandle
from ._types import CommandResult as CommandResult
from ._types import EntryInfo as EntryInfo
from ._types import FilesystemEvent as FilesystemEvent
from ._types import LogLine as LogLine
from ._types import MetricsPoint as MetricsPoint
from ._types import NetworkInfo as NetworkInfo
from ._types import NetworkPolicy as NetworkPolicy
from ._types import OutputChunk as OutputChunk
from ._types import ProcessInfo as ProcessInfo
from ._types import SandboxInfo as SandboxInfo
from ._types import SandboxMetrics as SandboxMetrics
from ._volumes import AsyncVolume as AsyncVolume
from ._volumes import IntegrityError as IntegrityError
from ._volumes import Volume as Volume
from ._volumes import VolumeEntry as VolumeEntry
from ._volumes import VolumeInfo as VolumeInfo
from ._volumes import VolumeMount as VolumeMount
from ._watch import WatchHandle as AsyncWatchHandle

try:
    __version__ = _distribution_version("insien-sandbox")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = [
    "APIError",
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncSecrets",
    "AsyncVolume",
    "AsyncWatchHandle",
    "AuthenticationError",
    "CodeContext",
    "CommandHandle",
    "CommandResult",
    "ConnectError",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FilesystemEvent",
    "InsienError",
    "IntegrityError",
    "LogLine",
    "MetricsPoint",
    "NetworkInfo",
    "NetworkPolicy",
    "NotFoundError",
    "NotSupportedError",
    "OutputChunk",
    "ProcessInfo",
    "RPCError",
    "RateLimitError",
    "Result",
    "Sandbox",
    "SandboxClosedError",
    "SandboxInfo",
    "SandboxMetrics",
    "SecretBinding",
    "SecretInfo",
    "Secrets",
    "UnavailableError",
    "Volume",
    "VolumeEntry",
    "VolumeInfo",
    "VolumeMount",
    "WatchHandle",
    "__version__",
]
