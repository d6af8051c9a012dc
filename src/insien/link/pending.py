"""One request in flight on a link: its messages as they come, credit granted to the agent as
they are consumed, and the byte budget its replies are charged to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..protocol import CREDITED_TYPES, is_final
from .budget import ByteBudget, Reservation
from .replies import Reply

if TYPE_CHECKING:
    from .agent import AgentLink

CREDIT_BATCH = 4
"""Output events consumed before the link grants the agent that much more credit."""


class PendingRequest:
    """The messages of one request in flight, granting the agent credit as they are consumed."""

    def __init__(
        self,
        link: AgentLink,
        agent_id: int | str,
        channel: trio.MemoryReceiveChannel[Reply],
        budget: ByteBudget | None = None,
    ) -> None:
        self.link = link
        self.agent_id = agent_id
        self.budget = budget
        self._channel = channel
        self._consumed = 0

    def release(self, reply: Reply) -> None:
        """The consumer is done with a reply's bytes (sent them, or dropped them)."""
        if self.budget is not None:
            self.budget.release(reply.charge)

    def drain(self) -> None:
        """Drop the replies nobody will take, releasing what they were charged."""
        while True:
            try:
                self.release(self._channel.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    def __aiter__(self) -> PendingRequest:
        return self

    async def __anext__(self) -> Reply:
        try:
            reply = await self._channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(self.budget, Reservation) and is_final(reply.message):
            # The answer is in and charged: what was set aside for it beyond that goes back
            # now, not once the client has read it.
            self.budget.settle()
        if reply.message.get("type") in CREDITED_TYPES:
            self._consumed += 1
            if self._consumed >= CREDIT_BATCH:
                granted, self._consumed = self._consumed, 0
                await self.link.send_internal(
                    {"type": "credit", "target": self.agent_id, "n": granted}
                )
        return reply

    async def cancel(self) -> None:
        await self.link.cancel(self.agent_id)
