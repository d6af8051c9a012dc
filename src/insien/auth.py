"""API keys and the short-lived, per-sandbox tokens carried in `agentUrl`."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

TOKEN_AUDIENCE = "insien:agent"


@dataclass(frozen=True)
class Tenant:
    """Who is calling. Sandboxes are owned by a tenant id; keys never leave this module."""

    id: str


DEFAULT_TENANT = Tenant("default")


class Authenticator:
    """Checks API keys in constant time and signs/verifies sandbox tokens with HS256."""

    def __init__(self, api_key: str, jwt_secret: str, token_ttl: float) -> None:
        self._api_key = api_key.encode()
        self._secret = jwt_secret
        self._token_ttl = token_ttl

    def tenant_for_key(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        if hmac.compare_digest(key.encode(), self._api_key):
            return DEFAULT_TENANT
        return None

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
        return Tenant(claims["ten"])
