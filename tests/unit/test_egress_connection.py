"""One connection out, decided without I/O (egress/connection.py): where it goes before DNS,
which resolved addresses the policy admits and why none, the sandbox's room for another, and
whether the proxy reads its requests for secrets."""

from __future__ import annotations

import ipaddress

from insien.egress import Ceiling, NetworkPolicy, parse_rules
from insien.egress.connection import Refused, Target, admitted, reads_requests, room, target
from insien.egress.rules import IPAddress


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


HOSTS = {"mirror.internal": ip("10.0.0.7")}


def test_an_address_literal_needs_no_resolver() -> None:
    assert target("93.184.215.14", HOSTS) == Target(None, ip("93.184.215.14"))
    assert target("[2001:4860::8888]", HOSTS) == Target(None, ip("2001:4860::8888"))


def test_a_name_is_normalized_and_the_operators_map_answers_before_dns() -> None:
    assert target("Mirror.Internal.", HOSTS) == Target("mirror.internal", ip("10.0.0.7"))
    assert target("Example.ORG", HOSTS) == Target("example.org", None)


def test_room_for_one_more_connection_stops_at_the_limit() -> None:
    assert room(0, 2) is None
    assert room(1, 2) is None
    full = room(2, 2)
    assert full == Refused(503, "2 connections out are open (INSIEN_MAX_TUNNELS)")


def test_a_name_that_does_not_resolve_is_the_networks_refusal() -> None:
    policy = NetworkPolicy.of(["*"])
    assert admitted(policy, Ceiling(), "nowhere.test", "nowhere.test", [], 443) == Refused(
        502, "nowhere.test does not resolve"
    )


def test_only_admitted_addresses_are_kept_in_the_resolvers_order() -> None:
    policy = NetworkPolicy.of(["public"], ["93.184.215.14"])
    found = [ip("10.1.1.1"), ip("93.184.215.14"), ip("1.1.1.1"), ip("8.8.8.8")]
    assert admitted(policy, Ceiling(), "example.org", "example.org", found, 443) == (
        ip("1.1.1.1"),
        ip("8.8.8.8"),
    )


def test_with_none_admitted_the_first_addresss_refusal_is_the_policys_403() -> None:
    policy = NetworkPolicy.of(["example.org"])
    found = [ip("10.1.1.1"), ip("192.168.0.1")]
    refused = admitted(policy, Ceiling(), "example.org", "example.org", found, 443)
    assert isinstance(refused, Refused)
    assert refused.status == 403
    assert refused.reason.startswith("example.org:443 (")
    assert "10.1.1.1" in refused.reason
    assert "operator" in refused.reason


def test_the_operators_address_rule_admits_a_private_address() -> None:
    policy = NetworkPolicy.of(["mirror.internal"])
    ceiling = Ceiling(parse_rules(["public", "10.0.0.7"]))
    found = [ip("10.0.0.7")]
    assert admitted(policy, ceiling, "mirror.internal", "mirror.internal", found, 80) == (
        ip("10.0.0.7"),
    )


def test_requests_are_read_only_where_a_secret_may_go() -> None:
    bound = NetworkPolicy.of(["public"], secrets=[{"secret": "API", "hosts": ["api.example.com"]}])
    assert reads_requests(bound, "HTTP", "anything.example.org", 80)
    assert reads_requests(bound, "CONNECT", "api.example.com", 443)
    assert not reads_requests(bound, "CONNECT", "other.example.com", 443)
    plain = NetworkPolicy.of(["public"])
    assert not reads_requests(plain, "HTTP", "api.example.com", 80)
    assert not reads_requests(plain, "CONNECT", "api.example.com", 443)
