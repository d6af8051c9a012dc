"""Sessions: answers that survive a dropped connection or a server restart, in one place.

A client that connects with `?session=` has its requests sent to the agent under ids of the
form `session:client-id`. When its connection drops, or the server restarts and re-attaches,
the agent's answers still carry those ids: the link keeps the finished ones (bounded), and
after a restart adopts the ones still running. When the session connects again, `resume`
hands it both, with the client's own ids restored.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol import Message
from .replies import Reply

if TYPE_CHECKING:
    from .agent import AgentLink
    from .budget import ByteBudget
    from .pending import PendingRequest

SESSION_MARK = ":"
ORPHAN_BYTES = 16 * 1024 * 1024
ORPHAN_COUNT = 1024


def session_agent_id(session: str, client_id: Any) -> str:
    """The agent-side id of a session client's request: the session and the client's id, so
    that a restarted server can route what the agent answered to the session's next connection.
    """
    return f"{session}{SESSION_MARK}{json.dumps(client_id, separators=(',', ':'))}"


def split_session_id(agent_id: str) -> tuple[str, Any]:
    session, _, client = agent_id.partition(SESSION_MARK)
    return session, json.loads(client)


def is_session_id(agent_id: object) -> bool:
    return isinstance(agent_id, str) and SESSION_MARK in agent_id


class SessionStore:
    """What a link keeps for sessions nobody is connected to: answers of finished requests
    (at most ORPHAN_BYTES and ORPHAN_COUNT, oldest dropped first) and requests adopted after a
    restart, until their session connects again."""

    def __init__(self) -> None:
        self._orphans: deque[Reply] = deque()
        self._orphan_bytes = 0
        self._adopted: dict[str, PendingRequest] = {}

    def keep(self, reply: Reply) -> None:
        self._orphans.append(reply)
        self._orphan_bytes += reply.size
        while self._orphan_bytes > ORPHAN_BYTES or len(self._orphans) > ORPHAN_COUNT:
            dropped = self._orphans.popleft()
            self._orphan_bytes -= dropped.size

    def adopt(self, agent_id: str, pending: PendingRequest) -> None:
        self._adopted[agent_id] = pending

    def take(self, session: str) -> tuple[list[Reply], dict[str, PendingRequest]]:
        prefix = session + SESSION_MARK
        mine = [r for r in self._orphans if str(r.message.get("id")).startswith(prefix)]
        if mine:
            self._orphans = deque(r for r in self._orphans if r not in mine)
            self._orphan_bytes = sum(r.size for r in self._orphans)
        adopted = {k: v for k, v in self._adopted.items() if k.startswith(prefix)}
        for key in adopted:
            del self._adopted[key]
        return mine, adopted


@dataclass
class Resumed:
    """What a reconnecting session is handed: answers to send at once (with the client's ids
    restored), the requests still running by client id, and the `resumed` event to send."""

    answers: list[str | bytes]
    running: dict[Any, PendingRequest]
    event: Message


def resume(link: AgentLink, session: str, budget: ByteBudget | None) -> Resumed:
    """Take what `link` kept for `session`; running requests are charged to `budget` now."""
    kept, adopted = link.take_session(session, budget)
    answers = [reply.to_client(split_session_id(str(reply.message["id"]))[1]) for reply in kept]
    running = {split_session_id(agent_id)[1]: pending for agent_id, pending in adopted.items()}
    event = {"type": "resumed", "session": session, "inFlight": list(running)}
    return Resumed(answers, running, event)
