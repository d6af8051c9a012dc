"""The server's end of a sandbox's egress proxy (the agent's `egressListen`; docs/protocol.md,
"Egress"): connections the agent accepted inside the sandbox, each waiting for the server to
carry it (`open_egress`, then bytes as in a tunnel) or refuse it (`refuse_egress`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .agent import AgentLink
from .pending import PendingRequest
from .tunnel import DEFAULT_IDLE, Tunnel, TunnelRefused, carried

LISTEN_TYPES = ("egressListen", "egressOpen", "egressRefuse")


class EgressUnavailable(Exception):
    """The agent cannot run the proxy (too old an agent, or the listen failed)."""


@dataclass(frozen=True)
class EgressRequest:
    """A connection waiting inside the sandbox: where it asked to go."""

    conn: int
    host: str
    port: int
    method: str
    """`CONNECT` (a tunnel, TLS inside) or `HTTP` (a plain request, sent on as it came)."""


class EgressListener:
    """The proxy's port inside the sandbox and the connections that arrive there."""

    def __init__(self, port: int, pending: PendingRequest) -> None:
        self.port = port
        self._pending = pending
        self.end_reason = ""

    def __aiter__(self) -> AsyncIterator[EgressRequest]:
        return self._requests()

    async def _requests(self) -> AsyncIterator[EgressRequest]:
        async for reply in self._pending:
            message = reply.message
            if message.get("type") != "egressConnect":
                self.end_reason = str(message.get("reason") or message.get("message") or "")
                return
            conn, host, port = message.get("conn"), message.get("host"), message.get("port")
            if not (isinstance(conn, int) and isinstance(host, str) and isinstance(port, int)):
                continue  # the agent is not trusted: an odd event is dropped
            method = "CONNECT" if message.get("method") == "CONNECT" else "HTTP"
            yield EgressRequest(conn, host[:1024], port, method)


def supports_egress(link: AgentLink) -> bool:
    types = (link.hello or {}).get("types")
    return isinstance(types, list) and all(kind in types for kind in LISTEN_TYPES)


@asynccontextmanager
async def listen_egress(
    link: AgentLink, env: dict[str, str] | None = None, ca: str | None = None
) -> AsyncIterator[EgressListener]:
    """Turn the sandbox's proxy on for as long as the block runs (leaving it turns it off:
    commands started later get no proxy variables, connections get 503). `env`: secrets'
    placeholders for commands; `ca`: the egress CA's certificate (PEM) for them to trust."""
    if not supports_egress(link):
        raise EgressUnavailable("this sandbox's agent has no egress proxy")
    listen: dict[str, Any] = {"type": "egressListen"}
    if env:
        listen["env"] = env
    if ca:
        listen["ca"] = ca
    async with link.request(listen) as pending:
        first = link.missing_reply(None)
        async for reply in pending:
            first = reply.message
            break
        port = first.get("port")
        if first.get("type") != "egressListening" or not isinstance(port, int):
            raise EgressUnavailable(str(first.get("message") or "the proxy did not start"))
        yield EgressListener(port, pending)


@asynccontextmanager
async def open_egress(
    link: AgentLink, conn: int, *, idle_timeout: float = DEFAULT_IDLE
) -> AsyncIterator[Tunnel]:
    """Carry waiting connection `conn`: the sandbox's bytes come from `receive`, the far
    end's go with `send`, as in a tunnel."""
    async with carried(link, {"type": "egressOpen", "conn": conn}, idle_timeout) as tunnel:
        yield tunnel


async def refuse_egress(link: AgentLink, conn: int, status: int, message: str) -> None:
    """Answer waiting connection `conn` with an HTTP error (403 with the rule that refused)."""
    answer = await link.call(
        {"type": "egressRefuse", "conn": conn, "status": status, "message": message}
    )
    if answer.get("type") == "error":
        raise TunnelRefused(str(answer.get("code")), str(answer.get("message")))
