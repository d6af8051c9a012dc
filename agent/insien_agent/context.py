"""What a request handler gets: its message, the agent's shared state, and a way to send."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .identity import FileWorkers, Identity
from .output import Subscriber
from .processes import ManagedProcess, ProcessTable
from .settings import AgentSettings
from .wire import Outbox

Message = dict[str, Any]


@dataclass
class Subscriptions:
    """Streaming requests by id, so `credit` and `cancel` can find them."""

    by_request: dict[Any, tuple[ManagedProcess, Subscriber]] = field(default_factory=dict)


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

    async def emit(self, event: Message) -> None:
        """Send a message that belongs to this request (it carries the request's id)."""
        await self.outbox.send(event)
