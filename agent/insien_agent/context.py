"""What a request handler gets: its message, the agent's shared state, and a way to send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .gate import ByteGate
from .identity import FileWorkers, Identity
from .output import OutFrame, Subscriber
from .processes import ManagedProcess, ProcessTable
from .proxy import EgressProxy
from .settings import AgentSettings
from .wire import Outbox

if TYPE_CHECKING:
    from .interpreter import Contexts

Message = dict[str, Any]
READ_GATE_BYTES = 48 * 1024 * 1024


class Credited(Protocol):
    """A streaming request that sends only as far as the server's credit allows."""

    def grant(self, n: int) -> None: ...


@dataclass
class Subscriptions:
    """Streaming requests by id, so `credit` and `cancel` can find them."""

    by_request: dict[Any, tuple[ManagedProcess, Subscriber]] = field(default_factory=dict)
    watchers: dict[Any, Credited] = field(default_factory=dict)
    """`watch` requests, whose event batches are credited like output events."""
    tunnels: dict[Any, Any] = field(default_factory=dict)
    """Open `tunnel`s by request id (`tunnel.Tunnel`): credit, and `tunnelSend` finds them."""


@dataclass
class Request:
    id: Any
    msg: Message
    settings: AgentSettings
    table: ProcessTable
    outbox: Outbox
    subscriptions: Subscriptions
    identity: Identity
    files: FileWorkers
    environment: dict[str, str] = field(default_factory=dict)
    """The sandbox's variables from create, which user commands get on top of the image's."""
    reads: ByteGate = field(default_factory=lambda: ByteGate(READ_GATE_BYTES))
    """Bytes of file content read and not yet written out, across all requests."""
    after_answer: list[Callable[[], None]] = field(default_factory=list)
    """Run once the request's final message is written (releases what the answer needed)."""
    channel: int | None = None
    """The request's binary channel: its bulk bytes go as frames on it, not in JSON."""
    payload: bytes | None = None
    """The bytes of the data frame a `write` on a channel came with."""
    egress: EgressProxy = field(default_factory=EgressProxy)
    """The agent's egress proxy (one per agent), for `egress*` requests and commands' env."""
    contexts: Contexts | None = None
    """The agent's code contexts (`interpreter.Contexts`, one per agent)."""

    async def emit(self, event: Message | OutFrame) -> None:
        """Send a message or frame that belongs to this request."""
        if isinstance(event, OutFrame):
            assert self.channel is not None
            await self.outbox.send_frame(self.id, self.channel, event.kind, event.data)
        else:
            await self.outbox.send(event)
