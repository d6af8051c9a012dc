"""The egress decision on its own (egress/rules.py, egress/policy.py): what each rule form
matches, what `public` never covers, and who wins between the sandbox and the operator."""

from __future__ import annotations

import ipaddress

import pytest

from insien.egress import Ceiling, NetworkPolicy, RuleError, decide, is_public, parse_rule
from insien.egress.rules import parse_rules


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "240.0.0.1",
    ],
)
def test_not_public(address: str) -> None:
    assert not is_public(ip(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public(address: str) -> None:
    assert is_public(ip(address))


def test_rule_forms() -> None:
    assert parse_rule("Example.ORG.").domain == "example.org"
    assert parse_rule("example.org:443").port == 443
    wild = parse_rule("*.example.com")
    assert wild.matches_name("a.b.example.com", 80)
    assert not wild.matches_name("example.com", 80)
    assert not wild.matches_name("badexample.com", 80)
    net = parse_rule("10.0.0.0/8:5432")
    assert net.matches_address(ip("10.9.9.9"), 5432)
    assert not net.matches_address(ip("10.9.9.9"), 5433)
    v6 = parse_rule("[2001:db8::/32]:443")
    assert v6.network == ipaddress.ip_network("2001:db8::/32")
    assert v6.port == 443
    assert parse_rule("2001:db8::1").network == ipaddress.ip_network("2001:db8::1/128")
    assert parse_rule("*").everything
    assert parse_rule("public").public


@pytest.mark.parametrize(
    "bad", ["", " ", "exa mple.org", "example.org:0", "example.org:99999", "[::1", "-a.org", 5]
)
def test_bad_rules(bad: object) -> None:
    with pytest.raises(RuleError):
        parse_rule(bad)


def test_at_most_256_rules() -> None:
    with pytest.raises(RuleError):
        parse_rules(["example.org"] * 257)


CEILING = Ceiling(parse_rules(["public", "127.0.0.2"]), parse_rules(["evil.example"]))


def test_deny_wins_and_allow_is_needed() -> None:
    policy = NetworkPolicy.of(["*.example.org"], ["bad.example.org"])
    public = ip("93.184.216.34")
    assert decide(policy, CEILING, "good.example.org", public, 443) is None
    refusal = decide(policy, CEILING, "bad.example.org", public, 443)
    assert refusal is not None
    assert "denyOut" in refusal.reason
    refusal = decide(policy, CEILING, "other.org", public, 443)
    assert refusal is not None
    assert "allowOut" in refusal.reason
    assert decide(NetworkPolicy(), CEILING, None, public, 80) is not None


def test_a_domain_rule_never_admits_a_refused_address() -> None:
    """A name the sandbox allows that resolves to loopback or metadata (DNS rebinding)."""
    policy = NetworkPolicy.of(["*"])
    for address in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "::1"):
        refusal = decide(policy, CEILING, "allowed.example", ip(address), 80)
        assert refusal is not None, address
        assert "operator" in refusal.reason
    # Only the operator's explicit address rule opens a non-public address.
    assert decide(policy, CEILING, "allowed.example", ip("127.0.0.2"), 80) is None
    # An operator's domain rule does not either.
    domain_ceiling = Ceiling(parse_rules(["internal.example"]))
    assert decide(policy, domain_ceiling, "internal.example", ip("10.0.0.5"), 80) is not None


def test_the_operators_deny_and_an_empty_ceiling() -> None:
    policy = NetworkPolicy.of(["*"])
    refusal = decide(policy, CEILING, "evil.example", ip("93.184.216.34"), 80)
    assert refusal is not None
    assert "'evil.example'" in refusal.reason
    assert decide(policy, Ceiling((), ()), None, ip("93.184.216.34"), 80) is not None


def test_policy_round_trips_through_json() -> None:
    policy = NetworkPolicy.of(["example.org:443", "10.0.0.0/8"], ["10.1.0.0/16"], True)
    assert NetworkPolicy.from_json(policy.to_json()) == policy
    with pytest.raises(ValueError, match="object"):
        NetworkPolicy.from_json([])
