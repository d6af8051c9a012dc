"""Byte budgets: memory held for a client is counted in bytes, per connection and within a
parent (its tenant's budget, kept by `tenancy/budgets.py`: the link knows no tenants).

A count of requests says nothing about memory (one `read` answer can be 22 MB), so every reply
the server holds for a client (from the moment the agent's line is routed to a request until
the connection has sent it) is charged to the connection's budget and to its tenant's. A reply
that would exceed either is not held: its request is answered `BUSY` instead, and the agent is
told to cancel it.

Charging on arrival comes too late for an answer that is large by design: the agent's line is
already read and parsed by then, and ten sandboxes can each be writing one. So a request whose
answer may be large (a whole-file `read`) first reserves what its answer can hold
(`ByteBudget.reserve`), and is answered `BUSY` without reaching the agent when that does not
fit; its answer is then charged against the reservation, not on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIB = 1024 * 1024
CONNECTION_COPIES = 2
"""Copies of a message a WebSocket connection holds at once, at most: the agent's line and the
message parsed from it while it waits to be relayed, then the text for the client, and while
it is sent the frame built from that text too, until a client that does not read takes it."""
ENVELOPE_BYTES = 1024
"""What an answer holds besides its content and path: id, type, offsets, sequence number."""


class ByteBudget:
    """Bytes held for one holder, within an optional shared parent (its tenant's budget).

    `copies` is how many copies of a message's bytes its holder keeps at once: a WebSocket
    connection keeps two (see `CONNECTION_COPIES`), so a message of n bytes costs 2n here and
    in the parent, whose limit is in bytes of memory too."""

    def __init__(self, limit: int, parent: ByteBudget | None = None, copies: int = 1) -> None:
        self.limit = limit
        self.parent = parent
        self.copies = copies
        self.held = 0

    def try_take(self, size: int) -> bool:
        """Charge a message of `size` bytes here and to the parent, or neither if either would
        overflow.

        A budget that holds nothing always admits one message, so a limit below the largest
        message cannot wedge a client for good."""
        cost = size * self.copies
        if self.held and self.held + cost > self.limit:
            return False
        if self.parent is not None and not self.parent.try_take(cost):
            return False
        self.held += cost
        return True

    def release(self, size: int) -> None:
        """A message charged with `try_take(size)` is no longer held."""
        if size <= 0:
            return
        cost = size * self.copies
        self.held = max(0, self.held - cost)
        if self.parent is not None:
            self.parent.release(cost)

    def reserve(self, size: int) -> Reservation | None:
        """Set `size` bytes aside for an answer not yet asked for, or None if they do not fit."""
        if not self.try_take(size):
            return None
        return Reservation(self, size)


class Reservation(ByteBudget):
    """Bytes set aside in a budget for one request's answer, before the agent is asked.

    The link charges the request's messages here: within the reservation they cost nothing
    more, past it the rest is taken from the budget as usual (and may be refused). Charges
    are released to the budget; `settle` gives back what the answer did not use.
    """

    def __init__(self, budget: ByteBudget, size: int) -> None:
        super().__init__(budget.limit, budget.parent)
        self.budget = budget
        self.unused = size

    def try_take(self, size: int) -> bool:
        if size <= self.unused:
            self.unused -= size
            return True
        if not self.budget.try_take(size - self.unused):
            return False
        self.unused = 0
        return True

    def release(self, size: int) -> None:
        self.budget.release(size)

    def reserve(self, size: int) -> Reservation | None:
        return self.budget.reserve(size)

    def settle(self) -> None:
        """The answer has come (or never will): give back the bytes it did not use."""
        unused, self.unused = self.unused, 0
        self.budget.release(unused)


def read_answer_bytes(request: Mapping[str, Any], max_read: int, size: int | None = None) -> int:
    """The most a `read` answer can hold, as the agent writes it: the content (at most
    `max_read` bytes of the file, `size` when known) as text or base64, plus its envelope.

    Text content costs its length: JSON escapes can make a line longer, and the link charges
    any excess when the answer comes (refusing it if it does not fit then)."""
    wanted = max_read
    length = request.get("length")
    if isinstance(length, int):
        wanted = min(wanted, max(length, 0))
    if size is not None:
        offset = request.get("offset")
        wanted = min(wanted, max(size - (offset if isinstance(offset, int) else 0), 0))
    if request.get("encoding") == "base64" and not request.get("binary"):
        wanted = 4 * -(-wanted // 3)
    return wanted + ENVELOPE_BYTES + 6 * len(str(request.get("path", "")))
