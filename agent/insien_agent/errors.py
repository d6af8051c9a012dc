"""Error codes the agent answers with, and the exception that carries one to the wire.

Every code is the server's too (`insien.protocol.ErrorCode`, docs/protocol.schema.json):
tests/unit/test_protocol_spec.py checks that each code any agent module uses is one of them."""

from __future__ import annotations

import errno

BAD_REQUEST = "BAD_REQUEST"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
NOT_FOUND = "NOT_FOUND"
PERMISSION_DENIED = "PERMISSION_DENIED"
IS_A_DIRECTORY = "IS_A_DIRECTORY"
NOT_A_DIRECTORY = "NOT_A_DIRECTORY"
TOO_LARGE = "TOO_LARGE"
BAD_ENCODING = "BAD_ENCODING"
ALREADY_EXISTS = "ALREADY_EXISTS"
NOT_EMPTY = "NOT_EMPTY"
CANCELLED = "CANCELLED"
BUSY = "BUSY"
CONNECTION_REFUSED = "CONNECTION_REFUSED"
CONTEXT_DIED = "CONTEXT_DIED"
"""A code context's process is gone (OOM, os._exit, killed): restart it."""
INTERNAL = "INTERNAL"


class AgentError(Exception):
    """A request failed in a way the client should hear about as `{"type": "error"}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def from_os_error(exc: OSError, path: str) -> AgentError:
    """Translate a filesystem or exec failure into the protocol's error codes."""
    if isinstance(exc, FileNotFoundError):
        return AgentError(NOT_FOUND, f"no such file or directory: {path}")
    if isinstance(exc, PermissionError):
        return AgentError(PERMISSION_DENIED, f"permission denied: {path}")
    if isinstance(exc, IsADirectoryError):
        return AgentError(IS_A_DIRECTORY, f"is a directory: {path}")
    if isinstance(exc, NotADirectoryError):
        return AgentError(NOT_A_DIRECTORY, f"not a directory: {path}")
    if isinstance(exc, FileExistsError):
        return AgentError(ALREADY_EXISTS, f"already exists: {path}")
    if exc.errno == errno.ENOTEMPTY:
        return AgentError(NOT_EMPTY, f"directory not empty: {path}")
    if exc.errno == errno.ENXIO:
        return AgentError(BAD_REQUEST, f"not a regular file (a FIFO with no reader?): {path}")
    if exc.errno == errno.ELOOP:
        return AgentError(BAD_REQUEST, f"too many levels of symbolic links: {path}")
    if exc.errno == errno.ENAMETOOLONG:
        return AgentError(BAD_REQUEST, f"file name too long: {path}")
    if exc.errno in (errno.EROFS, errno.EPERM, errno.EACCES):
        return AgentError(PERMISSION_DENIED, f"permission denied: {path}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return AgentError(TOO_LARGE, f"no space left for {path}")
    return AgentError(INTERNAL, f"{path}: {exc.strerror or exc}")
