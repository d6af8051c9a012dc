"""API keys and per-sandbox tokens."""

from __future__ import annotations

import time

import jwt

from insien.auth import TOKEN_AUDIENCE, Authenticator
from insien.resources import Resources
from insien.tenants import Plan, Tenant, TenantDirectory

SECRET = "s" * 40


def directory(api_key: str = "the-key") -> TenantDirectory:
    return TenantDirectory(
        api_key=api_key, default_plan=Plan(), operator_max=Resources(1, 1 << 30, 100), path=None
    )


def make(ttl: float = 60) -> Authenticator:
    return Authenticator(directory(), SECRET, ttl)


def test_api_key() -> None:
    auth = make()
    assert auth.tenant_for_key("the-key") == Tenant("default")
    for wrong in (None, "", "the-ke", "the-key ", "THE-KEY", "the-key-and-more", "ключ"):
        assert auth.tenant_for_key(wrong) is None


def test_token_is_valid_for_its_sandbox_only() -> None:
    auth = make()
    token = auth.issue_token("sb-1", Tenant("default"))
    assert auth.tenant_for_token(token, "sb-1") == Tenant("default")
    assert auth.tenant_for_token(token, "sb-2") is None
    assert auth.tenant_for_token(None, "sb-1") is None
    assert auth.tenant_for_token("garbage", "sb-1") is None


def test_token_signed_with_another_secret_is_refused() -> None:
    token = Authenticator(directory(), "x" * 40, 60).issue_token("sb-1", Tenant("default"))
    assert make().tenant_for_token(token, "sb-1") is None


def test_expired_token_is_refused() -> None:
    claims = {
        "sub": "sb-1",
        "ten": "default",
        "aud": TOKEN_AUDIENCE,
        "exp": int(time.time()) - 5,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert make().tenant_for_token(token, "sb-1") is None


def test_unsigned_token_is_refused() -> None:
    claims = {"sub": "sb-1", "ten": "default", "aud": TOKEN_AUDIENCE, "exp": time.time() + 60}
    token = jwt.encode(claims, None, algorithm="none")
    assert make().tenant_for_token(token, "sb-1") is None
