"""Reservations (issue 27): a large answer's bytes are set aside before the agent is asked, its
messages are charged against them, and what it did not use goes back exactly once."""

from __future__ import annotations

from insien.link.budget import ENVELOPE_BYTES, MIB, ByteBudget, read_answer_bytes
from insien.tenancy.budgets import TenantBudgets


def test_a_reservation_is_taken_up_front_and_its_answer_charged_against_it() -> None:
    tenant = ByteBudget(100)
    connection = ByteBudget(60, tenant)
    reservation = connection.reserve(50)
    assert reservation is not None
    assert (connection.held, tenant.held) == (50, 50)
    assert connection.reserve(20) is None  # the reservation counts as held
    assert reservation.try_take(30)  # within it: nothing more is taken
    assert connection.held == 50
    reservation.settle()  # the answer came: the 20 it did not use go back
    assert (connection.held, tenant.held) == (30, 30)
    reservation.settle()  # once only
    assert connection.held == 30
    reservation.release(30)  # its message was sent
    assert (connection.held, tenant.held) == (0, 0)


def test_an_answer_larger_than_its_reservation_takes_the_rest_or_is_refused() -> None:
    connection = ByteBudget(100)
    reservation = connection.reserve(40)
    assert reservation is not None
    assert reservation.try_take(70)  # 30 more, from the connection
    assert connection.held == 70
    other = connection.reserve(20)
    assert other is not None
    assert not other.try_take(40)  # 20 beyond its reservation would pass the limit
    other.settle()
    assert connection.held == 70


def test_a_connection_counts_each_message_as_the_copies_it_holds() -> None:
    tenants = TenantBudgets(limit=1000)
    connection = tenants.for_connection("acme", limit=100, copies=2)
    assert connection.try_take(30)
    assert (connection.held, tenants.held("acme")) == (60, 60)
    assert not connection.try_take(30)  # 60 + 60 > 100
    connection.release(30)
    assert tenants.held("acme") == 0


def test_a_tenants_budget_lives_as_long_as_any_of_its_connections() -> None:
    tenants = TenantBudgets(limit=100)
    first = tenants.for_connection("acme", limit=100)
    second = tenants.for_connection("acme", limit=100)
    tenants.connection_closed("acme")  # the second one ended, holding nothing
    tenants.forget_idle()
    third = tenants.for_connection("acme", limit=100)
    assert first.try_take(80)
    assert not third.try_take(40)  # one tenant budget for all three, not a fresh one
    assert second.parent is third.parent is first.parent
    for _ in range(2):
        tenants.connection_closed("acme")
    first.release(80)
    tenants.forget_idle()
    assert tenants.held("acme") == 0


def test_what_a_read_can_answer() -> None:
    path = {"path": "big.bin"}
    envelope = ENVELOPE_BYTES + 6 * len("big.bin")
    assert read_answer_bytes(path, 16 * MIB) == 16 * MIB + envelope  # the most any read holds
    assert read_answer_bytes(path, 16 * MIB, size=10) == 10 + envelope
    base64 = {**path, "encoding": "base64"}
    assert read_answer_bytes(base64, 16 * MIB, size=10) == 16 + envelope
    raw = {**base64, "binary": True}  # frames carry the bytes themselves
    assert read_answer_bytes(raw, 16 * MIB, size=10) == 10 + envelope
    part = {**path, "offset": 4, "length": 3}
    assert read_answer_bytes(part, 16 * MIB, size=10) == 3 + envelope
    assert read_answer_bytes({**path, "offset": 20}, 16 * MIB, size=10) == envelope
    assert read_answer_bytes({**path, "length": 1 << 40}, 16 * MIB) == 16 * MIB + envelope
