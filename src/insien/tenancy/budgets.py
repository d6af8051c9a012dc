"""Each tenant's byte budget for replies held for its clients (link/budget.py): one per tenant
id, the parent of every connection's budget the tenant opens, so all of a tenant's WebSockets
together hold at most INSIEN_TENANT_BUFFER_BYTES. The link charges budgets; which tenant a
budget belongs to, and how long it is kept, is tenant policy and lives here."""

from __future__ import annotations

from ..link.budget import ByteBudget


class TenantBudgets:
    """One budget per tenant id, made on first use, dropped when no connection uses it and it
    holds nothing (dropped earlier, a tenant's next connection would get a second budget)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._budgets: dict[str, ByteBudget] = {}
        self._connections: dict[str, int] = {}

    def for_connection(self, tenant_id: str, limit: int, copies: int = 1) -> ByteBudget:
        """A connection's budget within its tenant's; `copies` as for `ByteBudget`."""
        parent = self._budgets.get(tenant_id)
        if parent is None:
            parent = self._budgets[tenant_id] = ByteBudget(self.limit)
        self._connections[tenant_id] = self._connections.get(tenant_id, 0) + 1
        return ByteBudget(limit, parent, copies)

    def connection_closed(self, tenant_id: str) -> None:
        """A connection made by `for_connection` has ended."""
        left = self._connections.get(tenant_id, 0) - 1
        if left > 0:
            self._connections[tenant_id] = left
        else:
            self._connections.pop(tenant_id, None)

    def held(self, tenant_id: str) -> int:
        budget = self._budgets.get(tenant_id)
        return budget.held if budget is not None else 0

    def forget_idle(self) -> None:
        idle = [
            tenant_id
            for tenant_id, budget in self._budgets.items()
            if budget.held == 0 and tenant_id not in self._connections
        ]
        for tenant_id in idle:
            del self._budgets[tenant_id]
