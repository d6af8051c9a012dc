"""API keys and the short-lived, per-sandbox tokens carried in `agentUrl`."""

from __future__ import annotations

import time

import jwt

from .tenants import Tenant, TenantDirectory

TOKEN_AUDIENCE = "insien:agent"


class Authenticator:
    """Resolves API keys to tenants and signs/verifies sandbox tokens with HS256."""

    def __init__(self, tenants: TenantDirectory, jwt_secret: str, token_ttl: float) -> None:
        self._tenants = tenants
        self._secret = jwt_secret
        self._token_ttl = token_ttl

    def tenant_for_key(self, key: str | None) -> Tenant | None:
        return self._tenants.for_key(key)

    def issue_token(self, sandbox_id: str, tenant: Tenant) -> str:
        now = int(time.time())
        claims = {
            "sub": sandbox_id,
            "ten": tenant.id,
            "aud": TOKEN_AUDIENCE,
            "iat": now,
            "exp": now + int(self._token_ttl),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def tenant_for_token(self, token: str | None, sandbox_id: str) -> Tenant | None:
        """The token's tenant if it is valid, unexpired and issued for this very sandbox."""
        if not token:
            return None
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=TOKEN_AUDIENCE,
                options={"require": ["sub", "ten", "exp"]},
            )
        except jwt.PyJWTError:
            return None
        if claims.get("sub") != sandbox_id or not isinstance(claims.get("ten"), str):
            return None
        # A tenant removed from the tenants file loses its tokens too.
        return self._tenants.by_id(claims["ten"])
