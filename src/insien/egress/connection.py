"""What one connection out of a sandbox may do, decided without I/O: where it goes before any
DNS (an address literal, or a name the operator maps in INSIEN_EGRESS_HOSTS), which of the
addresses a name resolved to the policy admits, whether the sandbox has room for another
connection, and whether the proxy reads its requests to add secrets or carries it untouched.

`sandboxes/egress.py` asks these between the I/O steps `link/outbound.py` performs (resolve,
connect, relay), so what was checked is exactly what is connected to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .policy import Ceiling, NetworkPolicy, decide
from .rules import IPAddress, normalize_name


@dataclass(frozen=True)
class Refused:
    """Why a connection is not made, and the status the proxy's answer inside carries: 403 for
    the policy, 502 for the network (nothing to connect to), 503 for the sandbox's limit."""

    status: int
    reason: str


@dataclass(frozen=True)
class Target:
    """Where a connection asked to go, before any DNS: `name` (None for an address literal)
    and `known`, the address that needs no resolver (the literal, or the operator's mapping
    of the name), else None: the name is for DNS to answer."""

    name: str | None
    known: IPAddress | None


def target(host: str, hosts: Mapping[str, IPAddress]) -> Target:
    """The target of a connection to `host` (as the program asked: a name, an IPv4 address or
    a bracketed IPv6 one), with `hosts` the operator's map of normalized names."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return Target(None, ipaddress.ip_address(literal))
    except ValueError:
        pass
    name = normalize_name(host)
    return Target(name, hosts.get(name))


def room(open_now: int, most: int) -> Refused | None:
    """None if the sandbox may open one more connection out with `open_now` open."""
    if open_now >= most:
        return Refused(503, f"{most} connections out are open (INSIEN_MAX_TUNNELS)")
    return None


def admitted(
    policy: NetworkPolicy,
    ceiling: Ceiling,
    host: str,
    name: str | None,
    addresses: Sequence[IPAddress],
    port: int,
) -> tuple[IPAddress, ...] | Refused:
    """The addresses (in the resolver's order) the sandbox may connect to on `port`, having
    asked for `host` (`name` normalized, None for a literal); if none, why: the first address's
    refusal (403), or that the name does not resolve (502)."""
    if not addresses:
        return Refused(502, f"{host} does not resolve")
    allowed: list[IPAddress] = []
    first_refusal = ""
    for address in addresses:
        refusal = decide(policy, ceiling, name, address, port)
        if refusal is None:
            allowed.append(address)
        elif not first_refusal:
            first_refusal = refusal.reason
    if not allowed:
        return Refused(403, first_refusal)
    return tuple(allowed)


def reads_requests(policy: NetworkPolicy, method: str, host: str, port: int) -> bool:
    """Whether the proxy reads (and may rewrite) this connection's requests to add the
    sandbox's secrets: plain HTTP whenever secrets are bound, TLS only to a bound host.
    Anything else is an untouched tunnel."""
    bindings = policy.secrets
    return bool(bindings) and (
        method == "HTTP" or any(binding.covers_host(host, port) for binding in bindings)
    )
