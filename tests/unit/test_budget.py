"""Byte budgets: a connection's within its tenant's, released exactly once per charge."""

from __future__ import annotations

from insien.link.budget import ByteBudget
from insien.tenancy.budgets import TenantBudgets


def test_a_connection_budget_stops_at_its_own_limit_and_at_its_tenants() -> None:
    tenants = TenantBudgets(limit=100)
    first = tenants.for_connection("acme", limit=60)
    second = tenants.for_connection("acme", limit=60)
    assert first.try_take(50)
    assert not first.try_take(20)  # over the connection's 60
    assert second.try_take(40)
    assert not second.try_take(20)  # the tenant holds 90 of 100
    assert tenants.held("acme") == 90
    first.release(50)
    assert second.try_take(20)
    assert tenants.held("acme") == 60
    other = tenants.for_connection("other", limit=60)
    assert other.try_take(60)  # another tenant's budget is its own


def test_an_empty_budget_admits_one_message_of_any_size() -> None:
    budget = ByteBudget(10)
    assert budget.try_take(1000)
    assert not budget.try_take(1)
    budget.release(1000)
    assert budget.held == 0
    budget.release(5)  # releasing more than held never goes negative
    assert budget.held == 0


def test_idle_tenants_are_forgotten() -> None:
    tenants = TenantBudgets(limit=100)
    budget = tenants.for_connection("acme", limit=10)
    budget.try_take(5)
    tenants.forget_idle()
    assert tenants.held("acme") == 5
    budget.release(5)
    tenants.forget_idle()
    assert tenants.held("acme") == 0
