"""`sandbox.network`: the sandbox's ways out and who may reach its ports, changed live."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._secrets import SecretBinding, bindings_body
from ._session import Session
from ._types import NetworkInfo


def network_body(
    allow_out: Sequence[str] | None,
    deny_out: Sequence[str] | None,
    allow_public_traffic: bool | None,
    secrets: Sequence[SecretBinding | dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The REST body of a network policy (the create option and the update)."""
    body: dict[str, Any] = {}
    if secrets:
        body["secrets"] = bindings_body(secrets)
    if allow_out is not None:
        body["allowOut"] = list(allow_out)
    if deny_out is not None:
        body["denyOut"] = list(deny_out)
    if allow_public_traffic is not None:
        body["allowPublicTraffic"] = allow_public_traffic
    return body


class Network:
    """Rules are `example.org`, `*.example.com`, `10.0.0.0/8`, `2001:db8::1`, `public` or `*`,
    each optionally with `:port`; the server's operator bounds them all."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def get(self) -> NetworkInfo:
        """The policy and what the sandbox's egress has done."""
        sandbox_id = await self._session.create()
        reply = await self._session.request("GET", f"/sandboxes/{sandbox_id}/network")
        return NetworkInfo.from_wire(reply)

    async def update(
        self,
        *,
        allow_out: Sequence[str] = (),
        deny_out: Sequence[str] = (),
        allow_public_traffic: bool = False,
        secrets: Sequence[SecretBinding | dict[str, Any]] = (),
    ) -> NetworkInfo:
        """Replace the policy: connections made from now on follow it (open ones stay open).
        Commands started after egress is turned on get the proxy variables, and those
        started after a secret is bound its `INSIEN_SECRET_<NAME>` placeholder (the same one
        while it stays bound; `secrets` left out unbinds them all)."""
        sandbox_id = await self._session.create()
        body = network_body(allow_out, deny_out, allow_public_traffic, secrets)
        reply = await self._session.request("PUT", f"/sandbox/{sandbox_id}/network", body)
        return NetworkInfo.from_wire(reply)
