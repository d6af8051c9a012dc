"""Byte budgets: memory held for a client is counted in bytes, per connection and per tenant.

A count of requests says nothing about memory (one `read` answer can be 22 MB), so every reply
the server holds for a client (from the moment the agent's line is routed to a request until
the connection has sent it) is charged to the connection's budget and to its tenant's. A reply
that would exceed either is not held: its request is answered `BUSY` instead, and the agent is
told to cancel it.
"""

from __future__ import annotations

MIB = 1024 * 1024


class ByteBudget:
    """Bytes held for one holder, within an optional shared parent (its tenant's budget)."""

    def __init__(self, limit: int, parent: ByteBudget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.held = 0

    def try_take(self, size: int) -> bool:
        """Charge `size` bytes here and to the parent, or neither if either would overflow.

        A budget that holds nothing always admits one message, so a limit below the largest
        message cannot wedge a client for good."""
        if self.held and self.held + size > self.limit:
            return False
        if self.parent is not None and not self.parent.try_take(size):
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        if size <= 0:
            return
        self.held = max(0, self.held - size)
        if self.parent is not None:
            self.parent.release(size)


class TenantBudgets:
    """One budget per tenant id, made on first use, dropped when it holds nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._budgets: dict[str, ByteBudget] = {}

    def for_connection(self, tenant_id: str, limit: int) -> ByteBudget:
        parent = self._budgets.get(tenant_id)
        if parent is None:
            parent = self._budgets[tenant_id] = ByteBudget(self.limit)
        return ByteBudget(limit, parent)

    def held(self, tenant_id: str) -> int:
        budget = self._budgets.get(tenant_id)
        return budget.held if budget is not None else 0

    def forget_idle(self) -> None:
        for tenant_id in [t for t, b in self._budgets.items() if b.held == 0]:
            del self._budgets[tenant_id]
