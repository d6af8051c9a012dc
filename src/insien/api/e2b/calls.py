"""What an envd method gets (`EnvdCall`) and how it asks the sandbox's agent: Insien's own
protocol messages over the same link every front uses, with agent errors turned into Connect
errors the E2B SDKs map to their exceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from pydantic import BaseModel, ValidationError

from ...link import AgentGone, AgentLink
from ...protocol import ErrorCode, Message, ProtocolError, describe
from ...sandboxes.access import Admission
from ...sandboxes.sandbox import Sandbox, State
from ...tenancy.tenants import Tenant
from .connect import Code, ConnectError

M = TypeVar("M", bound=BaseModel)

_CODES: dict[str, Code] = {
    ErrorCode.BAD_REQUEST: Code.INVALID_ARGUMENT,
    ErrorCode.UNKNOWN_TYPE: Code.UNIMPLEMENTED,
    ErrorCode.NOT_FOUND: Code.NOT_FOUND,
    ErrorCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    ErrorCode.IS_A_DIRECTORY: Code.INVALID_ARGUMENT,
    ErrorCode.NOT_A_DIRECTORY: Code.INVALID_ARGUMENT,
    ErrorCode.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    ErrorCode.NOT_EMPTY: Code.FAILED_PRECONDITION,
    ErrorCode.TOO_LARGE: Code.RESOURCE_EXHAUSTED,
    ErrorCode.BAD_ENCODING: Code.INVALID_ARGUMENT,
    ErrorCode.BUSY: Code.RESOURCE_EXHAUSTED,
    ErrorCode.CANCELLED: Code.CANCELED,
    ErrorCode.AGENT_GONE: Code.UNAVAILABLE,
}


def connect_code(insien_code: object) -> Code:
    return _CODES.get(str(insien_code), Code.INTERNAL)


@dataclass
class EnvdCall:
    """One envd call: the admission the gateway gave it (sandbox, tenant, link) and its
    request message."""

    admission: Admission
    message: dict[str, Any]
    deadline: float | None
    """Seconds the client gave the call (`Connect-Timeout-Ms`), or None."""
    root: bool = False
    """E2B's `user="root"`, already allowed for this sandbox (envd.py): commands run as root."""

    @property
    def sandbox(self) -> Sandbox:
        return self.admission.sandbox

    @property
    def tenant(self) -> Tenant:
        tenant = self.admission.tenant
        assert tenant is not None  # envd is a control surface: no public admission
        return tenant

    @property
    def link(self) -> AgentLink:
        return self.admission.link

    def parse(self, model: type[M]) -> M:
        try:
            return model.model_validate(self.message)
        except ValidationError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, describe(exc)) from None

    @contextmanager
    def within_deadline(self) -> Iterator[None]:
        """Run the call's work within its `Connect-Timeout-Ms`; past it, DEADLINE_EXCEEDED."""
        with trio.move_on_after(self.deadline or float("inf")) as scope:
            yield
        if scope.cancelled_caught:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed")

    def gone(self, exc: AgentGone) -> ConnectError:
        """The error for a call whose sandbox went away under it."""
        if self.sandbox.state is State.ENDED:
            reason = self.sandbox.end_reason or "ended"
            return ConnectError(
                Code.UNAVAILABLE, f"The sandbox {self.sandbox.id} was not found ({reason})"
            )
        return ConnectError(Code.UNAVAILABLE, f"the sandbox's agent is unavailable: {exc}")

    async def agent(self, message: Message) -> Message:
        """One request to the agent and its final answer; an agent error raises."""
        try:
            reply = await self.link.call(message)
        except AgentGone as exc:
            raise self.gone(exc) from None
        except ProtocolError as exc:
            raise ConnectError(connect_code(exc.code), exc.message) from None
        return checked(reply)


def checked(reply: Message) -> Message:
    if reply.get("type") == "error":
        raise ConnectError(connect_code(reply.get("code")), str(reply.get("message", "")))
    return reply


Emit = Callable[[dict[str, Any]], Awaitable[None]]
Unary = Callable[[EnvdCall], Awaitable[dict[str, Any]]]
Streaming = Callable[[EnvdCall, Emit], Awaitable[None]]
ClientStreaming = Callable[[EnvdCall, AsyncIterator[dict[str, Any]]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Method:
    """One envd method: unary (`unary`), server-streaming (`stream`, with its keepalive) or
    client-streaming (`client_stream`: the request's messages in, one answer out)."""

    unary: Unary | None = None
    stream: Streaming | None = None
    keepalive: dict[str, Any] | None = None
    client_stream: ClientStreaming | None = None
