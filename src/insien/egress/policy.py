"""Who may connect where: a sandbox's own policy (`allowOut`, `denyOut`, E2B's names) inside
the operator's ceiling (INSIEN_EGRESS_ALLOW / INSIEN_EGRESS_DENY). Decided per connection on
the address actually connected to, after the server resolved the name."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .rules import (
    IPAddress,
    Rule,
    RuleError,
    describe,
    first_match,
    is_public,
    is_public_view,
    parse_rule,
    parse_rules,
    views,
)

PUBLIC = parse_rule("public")

SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
"""A secret's name: also the tail of its placeholder variable, `INSIEN_SECRET_<NAME>`."""
PLACEHOLDER = re.compile(r"insien-secret-[0-9a-f]{32}")
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
MAX_BINDINGS = 32
METHODS = re.compile(r"[A-Z]{1,16}")


def placeholder_variable(secret: str) -> str:
    """The environment variable a sandbox finds a secret's placeholder in."""
    return f"INSIEN_SECRET_{secret.upper()}"


@dataclass(frozen=True)
class SecretBinding:
    """Which secret the egress proxy adds to requests for which hosts, and how (issue 30).

    `header` (`Authorization: Bearer {secret}`) sets that header on every matching request;
    the placeholder (always on) is swapped for the value wherever it appears in a matching
    request's head (and its body, up to a bound, if `body`). A request is matching when its
    host is one of `hosts` and its method and path are among `methods`/`paths` (empty: any).
    """

    secret: str
    hosts: tuple[Rule, ...]
    placeholder: str
    header: str | None = None
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    body: bool = False

    @property
    def header_name(self) -> str | None:
        return self.header.split(":", 1)[0].strip() if self.header else None

    def header_value(self, value: str) -> str:
        """The header's value with the secret in it (the template's `{secret}`)."""
        assert self.header is not None
        return self.header.split(":", 1)[1].strip().replace("{secret}", value)

    def covers_host(self, host: str, port: int) -> bool:
        """The connection goes to one of this binding's hosts (as the sandbox named it)."""
        literal = host[1:-1] if host.startswith("[") else host
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            return any(rule.matches_name(host, port) for rule in self.hosts)
        return any(
            rule.network is not None and rule.matches_address(address, port) for rule in self.hosts
        )

    def covers_request(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        return not self.paths or any(path.startswith(prefix) for prefix in self.paths)

    def describe(self) -> str:
        """How a refusal names this binding (never the value, which it does not hold)."""
        scope = ", ".join(rule.text for rule in self.hosts)
        if self.methods:
            scope += f" ({' '.join(self.methods)})"
        if self.paths:
            scope += f" under {' '.join(self.paths)}"
        return f"secret binding {self.secret!r} for {scope}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "secret": self.secret,
            "hosts": [rule.text for rule in self.hosts],
            "placeholder": self.placeholder,
            "methods": list(self.methods),
            "paths": list(self.paths),
            "body": self.body,
        }
        if self.header is not None:
            data["header"] = self.header
        return data


def parse_binding(data: object, placeholders: Mapping[str, str]) -> SecretBinding:
    """One binding from its wire form; RuleError says what is wrong. `placeholders` gives
    each secret's placeholder (a sealed copy's own, or one made for this sandbox)."""
    if not isinstance(data, Mapping):
        raise RuleError("a secret binding is an object")
    name = data.get("secret")
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise RuleError(f"secret {name!r}: a name is a letter then letters, digits or _ (64)")
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise RuleError(f"secret {name!r}: hosts is a non-empty list")
    rules = parse_rules(hosts, what=f"secret {name!r} hosts")
    for rule in rules:
        single = rule.network is not None and rule.network.num_addresses == 1
        if rule.domain is None and not single:
            raise RuleError(
                f"secret {name!r}: {rule.text!r} is not a host (a name, "
                "*.domain or one address, optionally :port)"
            )
    header = data.get("header")
    if header is not None:
        if not isinstance(header, str) or any(c in header for c in "\r\n\x00"):
            raise RuleError(f"secret {name!r}: header is one line")
        header_name, colon, template = header.partition(":")
        if not colon or not HEADER_NAME.fullmatch(header_name.strip()):
            raise RuleError(f"secret {name!r}: header is 'Name: template'")
        if "{secret}" not in template or len(header) > 1024:
            raise RuleError(f"secret {name!r}: the header's template holds {{secret}}")
    methods = data.get("methods", [])
    if not isinstance(methods, list) or not all(
        isinstance(m, str) and METHODS.fullmatch(m.upper()) for m in methods
    ):
        raise RuleError(f"secret {name!r}: methods are HTTP method names")
    paths = data.get("paths", [])
    if not isinstance(paths, list) or not all(
        isinstance(p, str) and p.startswith("/") and len(p) <= 1024 and p.isprintable()
        for p in paths
    ):
        raise RuleError(f"secret {name!r}: paths are prefixes starting with /")
    placeholder = placeholders[name]
    if not PLACEHOLDER.fullmatch(placeholder):
        raise RuleError(f"secret {name!r}: a malformed placeholder")
    return SecretBinding(
        secret=name,
        hosts=rules,
        placeholder=placeholder,
        header=header,
        methods=tuple(m.upper() for m in methods),
        paths=tuple(paths),
        body=data.get("body") is True,
    )


def parse_bindings(
    items: Iterable[object], keep: Mapping[str, str] | None = None
) -> tuple[SecretBinding, ...]:
    """Bindings from their wire form. A secret keeps its placeholder from `keep` (the
    sandbox's policy before, or the sealed copy's), else gets a new random one; bindings of
    the same secret share it, so the sandbox has one variable per secret."""
    items = list(items)
    if len(items) > MAX_BINDINGS:
        raise RuleError(f"secrets: at most {MAX_BINDINGS} bindings")
    placeholders = dict(keep or {})
    seen: dict[str, str] = {}
    for item in items:
        name = item.get("secret") if isinstance(item, Mapping) else None
        if isinstance(name, str):
            other = seen.setdefault(name.upper(), name)
            if other != name:
                raise RuleError(f"secrets {other!r} and {name!r} differ only in case")
            if name not in placeholders:
                placeholders[name] = "insien-secret-" + secrets.token_hex(16)
    return tuple(parse_binding(item, placeholders) for item in items)


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network choices from create (or a live update)."""

    allow_out: tuple[Rule, ...] = ()
    """Where it may connect; empty: nowhere (no proxy, no proxy variables)."""
    deny_out: tuple[Rule, ...] = ()
    """Where it may not, whatever `allow_out` says."""
    allow_public_traffic: bool = False
    """Its ports answer anyone, with no key or preview token."""
    secrets: tuple[SecretBinding, ...] = ()
    """Secrets the proxy adds on the way out (issue 30); the sandbox sees placeholders."""

    @property
    def egress(self) -> bool:
        return bool(self.allow_out)

    def placeholders(self) -> dict[str, str]:
        """Each bound secret's placeholder, by secret name."""
        return {binding.secret: binding.placeholder for binding in self.secrets}

    def placeholder_environment(self) -> dict[str, str]:
        """What the sandbox's commands find: `INSIEN_SECRET_<NAME>=<placeholder>`."""
        return {placeholder_variable(name): value for name, value in self.placeholders().items()}

    @classmethod
    def of(
        cls,
        allow_out: Iterable[object] = (),
        deny_out: Iterable[object] = (),
        allow_public_traffic: bool = False,
        secrets: Iterable[object] = (),
        keep: Mapping[str, str] | None = None,
    ) -> NetworkPolicy:
        """From rule texts and secret bindings; RuleError names the first bad one.
        `keep`: placeholders secrets already have (see `parse_bindings`)."""
        return cls(
            parse_rules(allow_out, what="allowOut"),
            parse_rules(deny_out, what="denyOut"),
            allow_public_traffic,
            parse_bindings(secrets, keep),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "allowOut": [rule.text for rule in self.allow_out],
            "denyOut": [rule.text for rule in self.deny_out],
            "allowPublicTraffic": self.allow_public_traffic,
        }
        if self.secrets:  # absent when none, as before bindings existed
            data["secrets"] = [binding.to_json() for binding in self.secrets]
        return data

    @classmethod
    def from_json(cls, data: object) -> NetworkPolicy:
        """The inverse of `to_json` (a sealed note's copy); RuleError or ValueError if odd."""
        if not isinstance(data, dict):
            raise ValueError("a network policy is an object")
        allow, deny = data.get("allowOut", []), data.get("denyOut", [])
        if not isinstance(allow, list) or not isinstance(deny, list):
            raise ValueError("allowOut and denyOut are lists")
        bound = data.get("secrets", [])
        if not isinstance(bound, list):
            raise ValueError("secrets is a list")
        keep = {
            str(item.get("secret")): str(item.get("placeholder"))
            for item in bound
            if isinstance(item, dict)
        }
        return cls.of(allow, deny, data.get("allowPublicTraffic") is True, bound, keep)


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
