"""Secrets that never enter the sandbox: the server keeps each value encrypted, and its egress
proxy adds it to requests on the way out, only for the hosts a sandbox's binding names
(`AsyncSecrets`, and `Secrets` for blocking code). No call here, or on the server, answers a
value: listing gives names and dates. Bind one at create (`AsyncSandbox(secrets=[...])`) or
live (`sandbox.network.update(secrets=[...])`)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ._config import resolve
from ._session import REST_TIMEOUT, rest_request

T = TypeVar("T")


@dataclass(frozen=True)
class SecretBinding:
    """Which secret goes to which hosts, and how (a sandbox's `network.secrets`).

    With `header` (`"Authorization: Bearer {secret}"`) the proxy sets that header on every
    request to `hosts`; either way the sandbox finds an opaque placeholder in the variable
    `INSIEN_SECRET_<NAME>`, which the proxy swaps for the value wherever it appears in a
    request head to `hosts` (and in a body up to 1 MiB with `body=True`). Sent to any other
    host, the placeholder is refused. `methods` and `paths` (prefixes) narrow it further.
    Hosts are `api.example.com`, `*.example.com` or one address, each with an optional
    `:port`, and must be in the policy's `allow_out` too."""

    secret: str
    hosts: Sequence[str]
    header: str | None = None
    methods: Sequence[str] = ()
    paths: Sequence[str] = ()
    body: bool = False
    placeholder: str | None = field(default=None, compare=False)
    """What the sandbox sees in `INSIEN_SECRET_<NAME>` (filled in by the server's answers)."""

    def __post_init__(self) -> None:
        # Lists given, tuples kept: a binding compares equal to the server's answer for it.
        for name in ("hosts", "methods", "paths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"secret": self.secret, "hosts": list(self.hosts)}
        if self.header is not None:
            wire["header"] = self.header
        if self.methods:
            wire["methods"] = list(self.methods)
        if self.paths:
            wire["paths"] = list(self.paths)
        if self.body:
            wire["body"] = True
        return wire

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SecretBinding:
        return cls(
            secret=str(raw["secret"]),
            hosts=tuple(str(h) for h in raw.get("hosts") or ()),
            header=str(raw["header"]) if raw.get("header") is not None else None,
            methods=tuple(str(m) for m in raw.get("methods") or ()),
            paths=tuple(str(p) for p in raw.get("paths") or ()),
            body=bool(raw.get("body")),
            placeholder=str(raw["placeholder"]) if raw.get("placeholder") else None,
        )


def bindings_body(
    bindings: Sequence[SecretBinding | dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """A policy's `secrets`, from SecretBindings or the wire's own dicts."""
    return [b.to_wire() if isinstance(b, SecretBinding) else dict(b) for b in bindings or ()]


@dataclass(frozen=True)
class SecretInfo:
    """A secret as anyone may see it: never its value."""

    name: str
    description: str
    created_at: str
    updated_at: str
    version: int
    """1, and one more at each rotation."""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SecretInfo:
        return cls(
            name=str(raw["name"]),
            description=str(raw.get("description", "")),
            created_at=str(raw["createdAt"]),
            updated_at=str(raw["updatedAt"]),
            version=int(raw["version"]),
        )


class AsyncSecrets:
    """Your secrets on a server (its operator must have given it INSIEN_SECRETS_KEY, else
    every call raises UnavailableError).

    secrets = AsyncSecrets()
    await secrets.create("OPENAI", os.environ["OPENAI_API_KEY"])
    async with AsyncSandbox(allow_out=["api.openai.com"], secrets=[SecretBinding(
        "OPENAI", ["api.openai.com"], header="Authorization: Bearer {secret}")]) as box: ...
    """

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._key, self.base_url = resolve(api_key, base_url)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=self.base_url, headers={"X-API-Key": self._key}, timeout=REST_TIMEOUT
        ) as client:
            return await rest_request(client, self.base_url, method, path, body)

    async def create(self, name: str, value: str, *, description: str = "") -> SecretInfo:
        """Keep a secret (a letter, then letters, digits or _; its value one line of at most
        8 KiB). The value is never answered again, by any route."""
        body = {"name": name, "value": value, "description": description}
        return SecretInfo.from_wire(await self._call("POST", "/secrets", body))

    async def list(self) -> builtins.list[SecretInfo]:
        """Your secrets' names, descriptions, dates and versions (never a value)."""
        found = await self._call("GET", "/secrets")
        return [SecretInfo.from_wire(raw) for raw in found["secrets"]]

    async def rotate(self, name: str, value: str, *, description: str | None = None) -> SecretInfo:
        """A new value: sandboxes bound to it use it from their next request."""
        body: dict[str, Any] = {"value": value}
        if description is not None:
            body["description"] = description
        return SecretInfo.from_wire(
            await self._call("PUT", f"/secrets/{quote(name, safe='')}", body)
        )

    async def delete(self, name: str) -> None:
        """Gone at once: requests that would carry it are refused from now on."""
        await self._call("DELETE", f"/secrets/{quote(name, safe='')}")


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from ._sync import _run_in_own_thread

    return _run_in_own_thread(fn)


class Secrets:
    """The blocking twin of `AsyncSecrets`: each call runs on a short-lived event loop."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._async = AsyncSecrets(api_key, base_url)
        self.base_url = self._async.base_url

    def create(self, name: str, value: str, *, description: str = "") -> SecretInfo:
        return _run(lambda: self._async.create(name, value, description=description))

    def list(self) -> builtins.list[SecretInfo]:
        return _run(self._async.list)

    def rotate(self, name: str, value: str, *, description: str | None = None) -> SecretInfo:
        return _run(lambda: self._async.rotate(name, value, description=description))

    def delete(self, name: str) -> None:
        _run(lambda: self._async.delete(name))
