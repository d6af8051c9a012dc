"""Egress rules: `example.org`, `*.example.com`, `10.0.0.0/8`, `2001:db8::/32`, `public` and
`*`, each optionally with `:port` (`[v6]:port` for IPv6), parsed once and matched against a
connection's requested name and the address it resolved to."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RULES = 256
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")

NON_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",  # unique local, cloud metadata (fd00:ec2::254)
        "fe80::/10",
        "ff00::/8",
    )
)
"""What `public` never covers: only an explicit address rule of the operator's admits these."""


class RuleError(ValueError):
    """A rule that is not a domain, an address or a network (the message says which entry)."""


def normalize_address(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """A unicast address on the public internet (nothing private, local, or reserved)."""
    address = normalize_address(address)
    if any(address in block for block in NON_PUBLIC if block.version == address.version):
        return False
    return address.is_global and not address.is_multicast


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class Rule:
    """One entry: exactly one of `domain`, `network`, `public` or `everything`, and a port."""

    text: str
    domain: str | None = None
    """`example.org`, or `*.example.com` (subdomains only, not the name itself)."""
    network: IPNetwork | None = None
    public: bool = False
    everything: bool = False
    port: int | None = None

    @property
    def names_address(self) -> bool:
        """A rule that admits by address: it may admit non-public addresses (ceiling)."""
        return self.network is not None

    def matches_name(self, name: str, port: int) -> bool:
        if self.domain is None or not self._port_ok(port):
            return False
        name = normalize_name(name)
        if self.domain.startswith("*."):
            return name.endswith(self.domain[1:])
        return name == self.domain

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if not self._port_ok(port):
            return False
        address = normalize_address(address)
        if self.everything:
            return True
        if self.public:
            return is_public(address)
        return self.network is not None and address in self.network

    def matches(self, name: str | None, address: IPAddress, port: int) -> bool:
        """The connection's requested name (None for an address literal) or its address."""
        if name is not None and self.matches_name(name, port):
            return True
        return self.matches_address(address, port)

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RuleError(f"{text!r}: '[' without ']'")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise RuleError(f"{text!r}: only ':port' may follow ']'")
        return text[1:end], _port(text, rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(text, port)
    return text, None  # bare IPv6 (several colons) or no port


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise RuleError(f"{text!r}: the port must be 1-65535")
    return int(port)


def parse_rule(text: object) -> Rule:
    """One rule from its text, or RuleError saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"{text!r}: a rule is a non-empty string")
    raw = text.strip()
    if len(raw) > 300:
        raise RuleError(f"{raw[:40]!r}...: longer than 300 characters")
    host, port = _split_port(raw)
    lowered = host.lower()
    if lowered in ("*", "all"):
        return Rule(raw, everything=True, port=port)
    if lowered == "public":
        return Rule(raw, public=True, port=port)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        pass
    else:
        return Rule(raw, network=network, port=port)
    name = normalize_name(host)
    if not _DOMAIN.fullmatch(name) or name.replace("*.", "").replace(".", "").isdigit():
        raise RuleError(f"{raw!r}: not a domain, an IP address or a network")
    return Rule(raw, domain=name, port=port)


def parse_rules(texts: Iterable[object], *, what: str = "rules") -> tuple[Rule, ...]:
    """Rules from a list, or RuleError naming the first bad entry (and at most MAX_RULES)."""
    rules = tuple(parse_rule(text) for text in texts)
    if len(rules) > MAX_RULES:
        raise RuleError(f"{what}: at most {MAX_RULES} entries")
    return rules


def first_match(
    rules: Sequence[Rule], name: str | None, address: IPAddress, port: int
) -> Rule | None:
    return next((rule for rule in rules if rule.matches(name, address, port)), None)
