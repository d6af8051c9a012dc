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
        "::/96",  # IPv4-compatible (deprecated, RFC 4291)
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765, obsoleted)
        "64:ff9b:1::/48",  # local-use NAT64: where the IPv4 address sits is the network's choice
        "100::/64",  # discard-only
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local, cloud metadata (fd00:ec2::254)
        "fe80::/10",
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",
    )
)
"""What `public` never covers: only an explicit address rule of the operator's admits these."""

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix (RFC 6052): on a NAT64 host, `64:ff9b::a.b.c.d` is a.b.c.d."""
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
"""Local-use NAT64 (RFC 8215): the prefix length inside it, so the IPv4 address's place, is
the network's choice; every place RFC 6052 allows is taken as a possible IPv4 address."""
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


class RuleError(ValueError):
    """A rule that is not a domain, an address or a network (the message says which entry)."""


def normalize_address(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _rfc6052(value: int, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address a NAT64 address with a prefix this long carries (RFC 6052 2.2: bits
    64-71 are skipped below /96)."""
    octets = value.to_bytes(16, "big")
    if prefix_length == 96:
        return ipaddress.IPv4Address(octets[12:])
    start = prefix_length // 8
    return ipaddress.IPv4Address(octets[start:8] + octets[9 : 9 + 4 - (8 - start)])


def carried_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address may reach on some host: IPv4-compatible and
    -translated, NAT64 (well-known prefix, and every layout of the local-use one), 6to4's
    relay, Teredo's server and client. IPv4-mapped is not here: it is its IPv4 address."""
    address = normalize_address(address)
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    value = int(address)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _COMPATIBLE:
        return (low,) if value > 1 else ()  # `::` and `::1` carry nothing
    if address in _TRANSLATED or address in NAT64:
        return (low,)
    if address in NAT64_LOCAL:
        found = (_rfc6052(value, length) for length in (48, 56, 64, 96))
        return tuple(dict.fromkeys(found))
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return tuple(dict.fromkeys(address.teredo))  # (server, client: un-obfuscated)
    return ()


def views(address: IPAddress) -> tuple[IPAddress, ...]:
    """The address (IPv4-mapped as its IPv4 address) and every IPv4 address it carries: what
    rules are matched against, and what must all be public for the address to be."""
    return (normalize_address(address), *carried_ipv4(address))


def describe(address: IPAddress) -> str:
    """The address, and what it carries if anything (for refusals)."""
    carried = carried_ipv4(address)
    if not carried:
        return str(normalize_address(address))
    return f"{address}, which carries {', '.join(map(str, carried))}"


def is_public_view(address: IPAddress) -> bool:
    """This one address, not what it carries, is public: not in NON_PUBLIC, and global and
    not multicast, reserved or site-local for Python. The NAT64 prefix is public: the IPv4
    address it carries decides."""
    if any(address in block for block in NON_PUBLIC if block.version == address.version):
        return False
    if address in NAT64:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global and not address.is_multicast and not address.is_reserved


def is_public(address: IPAddress) -> bool:
    """A unicast address on the public internet (nothing private, local, or reserved), and so
    is every IPv4 address it carries (`2002:808:808::` is, `64:ff9b::a9fe:a9fe` is not)."""
    return all(is_public_view(view) for view in views(address))


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
        """`public` if the address and all it carries are public; a network if it holds the
        address or any IPv4 address it carries (a rule on 169.254.0.0/16 matches
        `64:ff9b::a9fe:a9fe`, one on 8.8.8.8 matches `2002:808:808::`)."""
        if not self._port_ok(port):
            return False
        if self.everything:
            return True
        if self.public:
            return is_public(address)
        return any(self.names_view(view, port) for view in views(address))

    def names_view(self, view: IPAddress, port: int) -> bool:
        """A network rule that holds this one address (one of `views`, not what it carries)."""
        return self.network is not None and self._port_ok(port) and view in self.network

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
