"""E2B's `network.rules` (header transforms) as Insien's secret bindings, and back.

The stock SDKs (e2b 2.63 for Python, 2.51 for JS) send, on create and on
`PUT /sandboxes/{id}/network`, `rules: {host: [{"transform": {"headers": {name: value}}}]}`,
where a value names a secret as `${e2b.secrets.<name>}` (what `Secret.fill(name)` writes; the
SDKs never resolve it) and E2B's egress proxy puts the secret's value there. Insien does the
same with a binding per host and header: `Name: <value with {secret}>` for that one host. A
header that names no secret, or two, has no binding form and is refused, as are E2B's
workload identity tokens (`${e2b.identity.tokens.<name>}`). E2B applies only the most specific
matching host's rules; Insien applies every binding that matches, so host keys that overlap
(`api.example.com` and `*.example.com`) are refused rather than merged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ...egress.policy import MAX_BINDINGS, NetworkPolicy

REFERENCE = re.compile(r"\$\{e2b\.([^{}]*)\}")
"""A placeholder E2B's runtime resolves: `${e2b.secrets.<name>}`, `${e2b.identity.tokens.<n>}`."""
SECRETS_PREFIX = "secrets."


class RulesError(ValueError):
    """A rule Insien cannot honour; the message names it (never a secret's value, which a rule
    does not hold)."""


def canonical_name(name: str) -> str:
    """An E2B secret name in Insien's store: E2B lower-cases names (`[a-z0-9_-]`), Insien's
    names are letters, digits and `_`, so `-` is stored as `_` (`openai-api-key` is
    `openai_api_key`; the two name one secret)."""
    return name.strip().lower().replace("-", "_")


def _host_name(host: str) -> str:
    """The name part of a rule key (`api.example.com:8443` -> `api.example.com`)."""
    if host.startswith("[") or host.count(":") != 1:
        return host
    return host.partition(":")[0]


def _overlap(a: str, b: str) -> bool:
    """Whether one request's host could match both keys (Insien's `*.d`: any depth, no apex)."""
    a, b = _host_name(a), _host_name(b)
    if a == b:
        return True
    for wild, other in ((a, b), (b, a)):
        if wild.startswith("*."):
            suffix = wild[1:]  # ".example.com"
            if other.endswith(suffix) or (other.startswith("*.") and suffix.endswith(other[1:])):
                return True
    return False


def _template(
    where: str, header: str, value: str, resolve: Callable[[str], str | None]
) -> tuple[str, str]:
    """The secret a header's value names, and the value as a binding's template."""
    secrets: list[str] = []
    for match in REFERENCE.finditer(value):
        inner = match.group(1)
        if inner.startswith("identity."):
            raise RulesError(
                f"{where}: header {header!r} uses a workload identity token, which Insien does"
                " not mint"
            )
        if not inner.startswith(SECRETS_PREFIX):
            raise RulesError(f"{where}: header {header!r} holds an unknown placeholder")
        secrets.append(inner[len(SECRETS_PREFIX) :])
    if not secrets:
        raise RulesError(
            f"{where}: header {header!r} names no secret: Insien adds headers that carry one of"
            " your secrets (create it with Secret.create, then write the value as"
            " Secret.fill(name), `${e2b.secrets.<name>}`)"
        )
    if len(secrets) > 1:
        raise RulesError(f"{where}: header {header!r} names {len(secrets)} secrets; one at most")
    if "{secret}" in value:
        raise RulesError(f"{where}: header {header!r} holds the text '{{secret}}'")
    found = resolve(secrets[0])
    if found is None:
        raise RulesError(f"{where}: header {header!r}: you have no secret {secrets[0]!r}")
    return found, REFERENCE.sub("{secret}", value, count=1)


def _headers_of(where: str, items: object) -> dict[str, tuple[str, str]]:
    """A host's ordered rules as its headers (a later rule's header replaces an earlier one of
    the same name, as E2B replaces a header the request already has)."""
    if not isinstance(items, list):
        raise RulesError(f"{where}: a host's rules are a list")
    headers: dict[str, tuple[str, str]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) - {"transform"}:
            raise RulesError(f"{where}[{index}]: a rule is {{'transform': {{'headers': {{...}}}}}}")
        transform = item.get("transform")
        if transform is None:
            continue
        if not isinstance(transform, Mapping) or set(transform) - {"headers"}:
            raise RulesError(f"{where}[{index}]: Insien applies header transforms only")
        given = transform.get("headers") or {}
        if not isinstance(given, Mapping):
            raise RulesError(f"{where}[{index}]: headers are an object of name -> value")
        for name, value in given.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise RulesError(f"{where}[{index}]: a header's name and value are strings")
            headers[name.lower()] = (name, value)
    return headers


def bindings_for(rules: object, resolve: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """E2B's rules as bindings in Insien's wire form (`NetworkPolicy.of` checks the hosts and
    headers). `resolve`: a secret's E2B name (or id) to its name in the tenant's store, None
    if the tenant has no such secret (another tenant's is not found either)."""
    if not isinstance(rules, Mapping):
        raise RulesError("network.rules is an object of host -> list of rules")
    hosts: dict[str, dict[str, tuple[str, str]]] = {}
    for key, items in rules.items():
        where = f"network.rules[{key!r}]"
        host = key.strip().lower() if isinstance(key, str) else ""
        if not host or host == "*":
            raise RulesError(f"{where}: a host is a DNS name or '*.domain' (a bare '*' is not)")
        if host in hosts:
            raise RulesError(f"{where}: the host is given twice")
        hosts[host] = _headers_of(where, items)
    keyed = [host for host, headers in hosts.items() if headers]
    for index, host in enumerate(keyed):
        for other in keyed[index + 1 :]:
            if _overlap(host, other):
                raise RulesError(
                    f"network.rules: {host!r} and {other!r} overlap: E2B applies only the more"
                    " specific one's rules, Insien would apply both, so give one of them"
                )
    bindings: list[dict[str, Any]] = []
    for host, headers in hosts.items():
        for name, value in headers.values():
            where = f"network.rules[{host!r}]"
            secret, template = _template(where, name, value, resolve)
            bindings.append({"secret": secret, "hosts": [host], "header": f"{name}: {template}"})
    if len(bindings) > MAX_BINDINGS:
        raise RulesError(f"network.rules: at most {MAX_BINDINGS} headers in all")
    return bindings


def rules_of(policy: NetworkPolicy) -> dict[str, list[dict[str, Any]]]:
    """A sandbox's header bindings as E2B's rules (`GET /sandboxes/{id}`): each header's value
    names its secret as `${e2b.secrets.<name>}`, never holds it. Bindings limited to some
    methods or paths (made through Insien's own API) have no E2B form and are left out."""
    found: dict[str, dict[str, str]] = {}
    for binding in policy.secrets:
        if binding.header is None or binding.methods or binding.paths:
            continue
        name, _, template = binding.header.partition(":")
        value = template.strip().replace("{secret}", f"${{e2b.secrets.{binding.secret}}}")
        for rule in binding.hosts:
            found.setdefault(rule.text, {})[name.strip()] = value
    return {host: [{"transform": {"headers": headers}}] for host, headers in found.items()}
