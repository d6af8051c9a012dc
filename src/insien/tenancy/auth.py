"""API keys, the short-lived per-sandbox tokens carried in `agentUrl`, and the tokens of
preview URLs (one port of one sandbox)."""

from __future__ import annotations

import enum
import time
from dataclasses import replace
from typing import Any

import jwt

from ..operations.webhooks import Webhook
from .tenants import Tenant, TenantDirectory


class Audience(enum.Enum):
    """What a sandbox token is for: each surface accepts only its own (sandboxes/access.py)."""

    CONTROL = "insien:agent"
    """`agentUrl` and E2B's `envdAccessToken`: the agent link, envd, code execution."""
    TRAFFIC = "insien:traffic"
    """E2B's `trafficAccessToken`: the user's own ports (and interpreter contexts)."""
    PORT = "insien:port"
    """Preview URLs: one port of one sandbox over HTTP, nothing else."""
    VOLUME = "insien:volume"
    """E2B's volume token: the files of one volume of the tenant's, nothing else."""


class Authenticator:
    """Resolves API keys to tenants and signs/verifies sandbox tokens with HS256."""

    def __init__(self, tenants: TenantDirectory, jwt_secret: str, token_ttl: float) -> None:
        self._tenants = tenants
        self._secret = jwt_secret
        self._token_ttl = token_ttl

    def tenant_for_key(self, key: str | None) -> Tenant | None:
        return self._tenants.for_key(key)

    def issue_token(
        self,
        sandbox_id: str,
        tenant: Tenant,
        *,
        ttl: float | None = None,
        audience: Audience = Audience.CONTROL,
    ) -> str:
        """A token for one sandbox and one purpose, valid for `ttl` seconds (default: the
        configured TTL)."""
        if audience in (Audience.PORT, Audience.VOLUME):
            raise ValueError(f"{audience.value} tokens have their own issue_… method")
        lifetime = ttl if ttl is not None else self._token_ttl
        return self._issue({"sub": sandbox_id}, audience.value, tenant, lifetime)

    def tenant_for_token(
        self, token: str | None, sandbox_id: str, audience: Audience = Audience.CONTROL
    ) -> Tenant | None:
        """The token's tenant if it is valid, unexpired, of this audience and issued for this
        very sandbox."""
        found = self._verified(token, audience.value, sandbox_id)
        return found[0] if found is not None else None

    def issue_port_token(self, sandbox_id: str, port: int, tenant: Tenant, ttl: float) -> str:
        """A token for a preview URL: HTTP to `port` of this sandbox, for `ttl` seconds."""
        return self._issue({"sub": sandbox_id, "port": port}, Audience.PORT.value, tenant, ttl)

    def tenant_for_port_token(self, token: str | None, sandbox_id: str, port: int) -> Tenant | None:
        """The token's tenant if it is valid, unexpired, and for this sandbox and port."""
        found = self._verified(token, Audience.PORT.value, sandbox_id, "port")
        if found is None or found[1].get("port") != port:
            return None
        return found[0]

    def issue_volume_token(self, volume_id: str, tenant: Tenant, ttl: float) -> str:
        """A token for the files of one volume (E2B's `VolumeAndToken.token`)."""
        return self._issue({"sub": volume_id}, Audience.VOLUME.value, tenant, ttl)

    def volume_token(self, token: str | None) -> tuple[Tenant, str] | None:
        """The tenant and the volume id of a valid, unexpired volume token."""
        if not token:
            return None
        try:  # which volume it names; `_verified` then checks everything, that included
            named = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            return None
        if not isinstance(named, str):
            return None
        found = self._verified(token, Audience.VOLUME.value, named)
        return (found[0], named) if found is not None else None

    def _issue(self, claims: dict[str, Any], audience: str, tenant: Tenant, ttl: float) -> str:
        now = int(time.time())
        claims = {
            **claims,
            "ten": tenant.id,
            "kid": tenant.key_id,
            "aud": audience,
            "iat": now,
            "exp": now + int(ttl),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def _verified(
        self, token: str | None, audience: str, sandbox_id: str, *required: str
    ) -> tuple[Tenant, dict[str, Any]] | None:
        """The tenant and claims of a valid, unexpired token of `audience` for this sandbox."""
        if not token:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=audience,
                options={"require": ["sub", "ten", "kid", "exp", *required]},
            )
        except jwt.PyJWTError:
            return None
        if claims.get("sub") != sandbox_id:
            return None
        if not isinstance(claims.get("ten"), str) or not isinstance(claims.get("kid"), str):
            return None
        # A token is worth no more than the key it was issued under: a revoked key, or a
        # tenant removed from the tenants file, loses its tokens too.
        if not self._tenants.key_valid(claims["ten"], claims["kid"]):
            return None
        tenant = self._tenants.by_id(claims["ten"])
        if tenant is None:
            return None
        return replace(tenant, key_id=claims["kid"]), claims

    def tenant_exists(self, tenant_id: str) -> bool:
        return self._tenants.exists(tenant_id)

    def webhooks(self, tenant_id: str) -> tuple[Webhook, ...]:
        """Where the tenant's lifecycle events go (the tenants file, re-read as it changes)."""
        return self._tenants.webhooks(tenant_id)

    def still_valid(self, tenant: Tenant) -> bool:
        """Whether the key a caller authenticated with still opens anything."""
        return self._tenants.key_valid(tenant.id, tenant.key_id)
