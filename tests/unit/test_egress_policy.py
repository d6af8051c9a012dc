"""The egress decision on its own (egress/rules.py, egress/policy.py): what each rule form
matches, what `public` never covers, and who wins between the sandbox and the operator."""

from __future__ import annotations

import ipaddress

import pytest

from insien.egress import Ceiling, NetworkPolicy, RuleError, decide, is_public, parse_rule
from insien.egress.rules import carried_ipv4, parse_rules


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


# IPv6 that carries an IPv4 address (issue 27, W1): on a host with NAT64 (or 6to4, Teredo),
# these reach the IPv4 address, so rules and the ceiling see it too.

TEREDO_TO_LOOPBACK = "2001:0:808:808::80ff:fffe"  # server 8.8.8.8, client ~0x80fffffe = 127.0.0.1
TEREDO_PUBLIC = "2001:0:808:808::fefe:fefe"  # server 8.8.8.8, client 1.1.1.1


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::127.0.0.1", ["127.0.0.1"]),
        ("::ffff:0:7f00:1", ["127.0.0.1"]),
        ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
        ("2002:7f00:1::", ["127.0.0.1"]),
        (TEREDO_TO_LOOPBACK, ["8.8.8.8", "127.0.0.1"]),
        # Local-use NAT64: every RFC 6052 layout (/48, /56, /64, /96) is a candidate.
        (
            "64:ff9b:1:a9fe:a9:fe00::",
            ["169.254.169.254", "254.169.254.0", "169.254.0.0", "0.0.0.0"],
        ),
        ("::ffff:127.0.0.1", []),  # mapped: it is its IPv4 address, not an IPv6 carrying one
        ("::1", []),
        ("::", []),
        ("2606:4700:4700::1111", []),
    ],
)
def test_carried_ipv4(address: str, carried: list[str]) -> None:
    assert [str(a) for a in carried_ipv4(ip(address))] == carried


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible
        "::ffff:0:7f00:1",  # IPv4-translated
        "64:ff9b::7f00:1",  # NAT64, well-known prefix
        "64:ff9b::a9fe:a9fe",  # ... the metadata address
        "64:ff9b::a00:1",
        "64:ff9b:1::a9fe:a9fe",  # NAT64, local-use prefix
        "2002:7f00:1::",  # 6to4
        "2002:a9fe:a9fe::",
        TEREDO_TO_LOOPBACK,
        "2001:0:a9fe:a9fe::fefe:fefe",  # Teredo server at the metadata address
        # Not checkable or deprecated, whatever they carry:
        "::8.8.8.8",
        "::ffff:0:808:808",
        "64:ff9b:1::808:808",
        TEREDO_PUBLIC,
        "fec0::1",  # site-local
        "5f00::1",  # reserved
        "64:ff9b:0:1::808:808",  # 64:ff9b::/32 outside the /96: reserved
    ],
)
def test_ipv6_carrying_or_deprecated_is_not_public(address: str) -> None:
    assert not is_public(ip(address))


@pytest.mark.parametrize("address", ["2002:808:808::", "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_ipv6_carrying_a_public_ipv4_is_public(address: str) -> None:
    assert is_public(ip(address))


EMBEDDED_LOOPBACK = ["::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::"]


@pytest.mark.parametrize("address", [*EMBEDDED_LOOPBACK, "64:ff9b::a9fe:a9fe", TEREDO_TO_LOOPBACK])
def test_everything_allowed_still_cannot_reach_loopback_or_metadata(address: str) -> None:
    policy = NetworkPolicy.of(["0.0.0.0/0", "::/0"])
    refusal = decide(policy, CEILING, None, ip(address), 80)
    assert refusal is not None
    assert "outside what the operator allows" in refusal.reason
    assert "which carries" in refusal.reason
    # Naming the IPv6 form's network does not open what it carries.
    wide = Ceiling(parse_rules(["public", "::/0"]))
    assert decide(policy, wide, None, ip(address), 80) is not None


def test_a_rule_on_an_ipv4_network_matches_what_ipv6_carries() -> None:
    policy = NetworkPolicy.of(["*"])
    # The operator's deny on 169.254.0.0/16 refuses each form that carries the metadata address,
    # even with a ceiling that admits every address by network (deny wins).
    open_ceiling = Ceiling(parse_rules(["0.0.0.0/0", "::/0"]), parse_rules(["169.254.0.0/16"]))
    for address in (
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1:a9fe:a9:fe00::",
        "2002:a9fe:a9fe::",
        "2001:0:a9fe:a9fe::fefe:fefe",
        "::169.254.169.254",
    ):
        refusal = decide(policy, open_ceiling, None, ip(address), 80)
        assert refusal is not None, address
        assert "operator's rule '169.254.0.0/16'" in refusal.reason
    assert decide(policy, open_ceiling, None, ip("64:ff9b::a00:1"), 80) is None
    # The sandbox's denyOut on an IPv4 address refuses its 6to4 and NAT64 forms.
    denying = NetworkPolicy.of(["*"], ["8.8.8.8"])
    for address in ("2002:808:808::", "64:ff9b::808:808", TEREDO_PUBLIC):
        refusal = decide(denying, CEILING, None, ip(address), 443)
        assert refusal is not None, address
        assert "denyOut rule '8.8.8.8'" in refusal.reason
    # A public IPv4 address carried is that address: the sandbox's allowOut naming it admits it.
    allowing = NetworkPolicy.of(["8.8.8.8"])
    assert decide(allowing, CEILING, None, ip("2002:808:808::"), 443) is None
    assert decide(allowing, CEILING, None, ip("64:ff9b::808:808"), 443) is None
    assert decide(allowing, CEILING, None, ip("2002:101:101::"), 443) is not None
    # Port-qualified rules keep their port.
    assert decide(NetworkPolicy.of(["8.8.8.8:53"]), CEILING, None, ip("2002:808:808::"), 443)


def test_an_operator_rule_on_an_ipv4_network_admits_it_as_carried() -> None:
    """As for IPv4-mapped (`::ffff:10.1.2.3` has always been 10.1.2.3), an operator's rule naming
    an IPv4 network admits the forms that reach it where their IPv6 form is public itself;
    the deprecated forms need a rule of their own as well."""
    policy = NetworkPolicy.of(["*"])
    ceiling = Ceiling(parse_rules(["public", "10.0.0.0/8"]))
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::"):
        assert decide(policy, ceiling, None, ip(address), 80) is None, address
    for address in ("::10.1.2.3", "::ffff:0:a01:203", "64:ff9b::a9fe:a9fe", "2002:ac10:1::"):
        assert decide(policy, ceiling, None, ip(address), 80) is not None, address
    with_compatible = Ceiling(parse_rules(["10.0.0.0/8", "::/96"]))
    assert decide(policy, with_compatible, None, ip("::10.1.2.3"), 80) is None
    # Nor does naming the IPv6 prefix open the IPv4 addresses carried behind it.
    nat64 = Ceiling(parse_rules(["public", "64:ff9b::/96", "2002::/16"]))
    assert decide(policy, nat64, None, ip("64:ff9b::808:808"), 80) is None
    assert decide(policy, nat64, None, ip("64:ff9b::7f00:1"), 80) is not None
    assert decide(policy, nat64, None, ip("2002:a9fe:a9fe::"), 80) is not None
    # fec0::/10 (site-local) is not public: only a rule naming it admits it.
    assert decide(policy, CEILING, None, ip("fec0::1"), 80) is not None
    assert decide(policy, Ceiling(parse_rules(["fec0::/10"])), None, ip("fec0::1"), 80) is None
