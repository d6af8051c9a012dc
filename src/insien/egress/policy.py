"""Who may connect where: a sandbox's own policy (`allowOut`, `denyOut`, E2B's names) inside
the operator's ceiling (INSIEN_EGRESS_ALLOW / INSIEN_EGRESS_DENY). Decided per connection on
the address actually connected to, after the server resolved the name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .rules import (
    IPAddress,
    Rule,
    describe,
    first_match,
    is_public,
    is_public_view,
    parse_rule,
    parse_rules,
    views,
)

PUBLIC = parse_rule("public")


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network choices from create (or a live update)."""

    allow_out: tuple[Rule, ...] = ()
    """Where it may connect; empty: nowhere (no proxy, no proxy variables)."""
    deny_out: tuple[Rule, ...] = ()
    """Where it may not, whatever `allow_out` says."""
    allow_public_traffic: bool = False
    """Its ports answer anyone, with no key or preview token."""

    @property
    def egress(self) -> bool:
        return bool(self.allow_out)

    @classmethod
    def of(
        cls,
        allow_out: Iterable[object] = (),
        deny_out: Iterable[object] = (),
        allow_public_traffic: bool = False,
    ) -> NetworkPolicy:
        """From rule texts; RuleError names the first bad one."""
        return cls(
            parse_rules(allow_out, what="allowOut"),
            parse_rules(deny_out, what="denyOut"),
            allow_public_traffic,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "allowOut": [rule.text for rule in self.allow_out],
            "denyOut": [rule.text for rule in self.deny_out],
            "allowPublicTraffic": self.allow_public_traffic,
        }

    @classmethod
    def from_json(cls, data: object) -> NetworkPolicy:
        """The inverse of `to_json` (a sealed note's copy); RuleError or ValueError if odd."""
        if not isinstance(data, dict):
            raise ValueError("a network policy is an object")
        allow, deny = data.get("allowOut", []), data.get("denyOut", [])
        if not isinstance(allow, list) or not isinstance(deny, list):
            raise ValueError("allowOut and denyOut are lists")
        return cls.of(allow, deny, data.get("allowPublicTraffic") is True)


@dataclass(frozen=True)
class Ceiling:
    """The operator's bound on every sandbox's egress. Addresses that are not public
    (loopback, private, link-local and metadata, CGNAT, multicast, reserved, and IPv6 that
    carries such an IPv4 address: NAT64, 6to4, Teredo, IPv4-compatible) pass only explicit
    address or network rules of the operator's, one for the address and one for each
    non-public IPv4 address it carries: no domain rule, `public` or `*` admits them, so a name
    that resolves there is refused however it was allowed."""

    allow: tuple[Rule, ...] = (PUBLIC,)
    deny: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """Why a connection was refused, in words the proxy's 403 body carries."""

    reason: str


def decide(
    policy: NetworkPolicy, ceiling: Ceiling, name: str | None, address: IPAddress, port: int
) -> Refusal | None:
    """None if the sandbox may connect to `address`:`port` (asked for as `name`, or by address
    when `name` is None), else the rule that refused it. The sandbox's `denyOut` wins over its
    `allowOut`; the operator's deny over everything; the ceiling bounds what the sandbox allows.
    Address rules see an IPv6 address and every IPv4 address it carries (`rules.views`)."""
    target = f"{name or address}:{port}"
    denied = first_match(policy.deny_out, name, address, port)
    if denied is not None:
        return Refusal(f"{target} is refused by the sandbox's denyOut rule {denied.text!r}")
    if first_match(policy.allow_out, name, address, port) is None:
        return Refusal(f"{target} is not in the sandbox's allowOut")
    denied = first_match(ceiling.deny, name, address, port)
    if denied is not None:
        return Refusal(
            f"{target} ({describe(address)}) is refused by the operator's rule {denied.text!r}"
        )
    if not _within(ceiling.allow, name, address, port):
        return Refusal(f"{target} ({describe(address)}) is outside what the operator allows")
    return None


def _within(allow: Sequence[Rule], name: str | None, address: IPAddress, port: int) -> bool:
    """Public: any rule. Not: each non-public view (the address, or an IPv4 address it carries)
    needs an address rule of its own, so naming 10.0.0.0/8 does not open `::10.0.0.1` (whose
    deprecated IPv6 form is not public either), nor `2002::/16` open `2002:a9fe:a9fe::`."""
    if is_public(address):
        return first_match(allow, name, address, port) is not None
    return all(
        any(rule.names_view(view, port) for rule in allow)
        for view in views(address)
        if not is_public_view(view)
    )
