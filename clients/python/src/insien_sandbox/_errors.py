"""The SDK's exception tree. Catch InsienError for everything the SDK raises on purpose.

InsienError
├── APIError                 the REST API answered with an error status
│   ├── AuthenticationError  401: missing or wrong API key
│   ├── NotFoundError        404: no such sandbox (or not yours)
│   ├── RateLimitError       429: over a quota or rate; `retry_after` says how long to wait
│   ├── NotSupportedError    501: the server's runtime cannot do this (Kubernetes: pause)
│   └── UnavailableError     503: Docker or the sandbox image is not available
├── ConnectError             the service could not be reached at all
├── RPCError                 the agent answered a request with an `error` message
└── SandboxClosedError       the sandbox's connection ended (destroyed, agent gone)
"""

from __future__ import annotations

import httpx


class InsienError(Exception):
    """Base class of every error the SDK raises deliberately."""


class ConnectError(InsienError):
    """The Insien service could not be reached (wrong URL, service down)."""


class APIError(InsienError):
    """The REST API answered with an error status."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: the sandbox does not exist, has been destroyed, or belongs to someone else."""


class RateLimitError(APIError):
    """429: too many live sandboxes or connections (`QUOTA_EXCEEDED`), or creates too fast
    (`RATE_LIMITED`); `retry_after` is the server's advice in seconds."""


class NotSupportedError(APIError):
    """501: the server's runtime cannot do this at all (on Kubernetes: pause, resume,
    snapshots); retrying will not help."""


class UnavailableError(APIError):
    """503: the service cannot make sandboxes right now (Docker down, image missing)."""


class RPCError(InsienError):
    """The agent refused or failed a request; `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SandboxClosedError(InsienError):
    """The connection to the sandbox ended before the answer arrived."""


def api_error(
    status: int, code: str, message: str, *, retry_after: float | None = None
) -> APIError:
    kind: type[APIError] = {
        401: AuthenticationError,
        404: NotFoundError,
        429: RateLimitError,
        501: NotSupportedError,
        503: UnavailableError,
    }.get(status, APIError)
    return kind(status, code, message, retry_after=retry_after)


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error an error answer of the REST API stands for: its status, code, message
    and `Retry-After`. The one place the SDK maps REST errors."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:500]}
    retry_after = response.headers.get("Retry-After", "")
    return api_error(
        response.status_code,
        str(body.get("code", "HTTP_ERROR")),
        str(body.get("message", "")),
        retry_after=float(retry_after) if retry_after.isdigit() else None,
    )
