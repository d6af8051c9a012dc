"""API keys and per-sandbox tokens."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jwt

from insien.tenancy.auth import Audience, Authenticator
from insien.tenancy.resources import Resources
from insien.tenancy.tenants import (
    RELOAD_CHECK_SECONDS,
    Plan,
    Tenant,
    TenantDirectory,
    hash_key,
    new_key,
)

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
    caller = auth.tenant_for_key("the-key")
    assert caller is not None
    assert caller.key_id == "default"
    token = auth.issue_token("sb-1", caller)
    assert auth.tenant_for_token(token, "sb-1") == Tenant("default")
    assert auth.tenant_for_token(token, "sb-2") is None
    assert auth.tenant_for_token(None, "sb-1") is None
    assert auth.tenant_for_token("garbage", "sb-1") is None


def test_token_signed_with_another_secret_is_refused() -> None:
    caller = Tenant("default", key_id="default")
    token = Authenticator(directory(), "x" * 40, 60).issue_token("sb-1", caller)
    assert make().tenant_for_token(token, "sb-1") is None


def test_expired_token_is_refused() -> None:
    claims = {
        "sub": "sb-1",
        "ten": "default",
        "aud": Audience.CONTROL.value,
        "exp": int(time.time()) - 5,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert make().tenant_for_token(token, "sb-1") is None


def test_unsigned_token_is_refused() -> None:
    claims = {
        "sub": "sb-1",
        "ten": "default",
        "aud": Audience.CONTROL.value,
        "exp": time.time() + 60,
    }
    token = jwt.encode(claims, "", algorithm="none")  # "none" takes no key
    assert make().tenant_for_token(token, "sb-1") is None


def test_a_token_is_worth_no_more_than_its_key(tmp_path: Path) -> None:
    """Issue 18: a token minted under a key that is then revoked (or whose tenant is removed)
    opens nothing, and `still_valid` says so for connections already open."""
    keys = {"ci": new_key(), "old": new_key()}
    path = tmp_path / "tenants.toml"

    def write(revoked: set[str], tenant: bool = True) -> None:
        entries = ", ".join(
            f'{{ id = "{name}", sha256 = "{hash_key(key)}", '
            f"revoked = {str(name in revoked).lower()} }}"
            for name, key in keys.items()
        )
        path.write_text(f"[tenants.acme]\nkeys = [{entries}]\n" if tenant else "")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    write(set())
    now = [0.0]
    tenants = TenantDirectory(
        api_key=None,
        default_plan=Plan(),
        operator_max=Resources(1, 1 << 30, 100),
        path=path,
        clock=lambda: now[0],
    )
    auth = Authenticator(tenants, SECRET, 60)
    old = auth.tenant_for_key(keys["old"])
    ci = auth.tenant_for_key(keys["ci"])
    assert old is not None
    assert ci is not None
    old_token, ci_token = auth.issue_token("sb", old), auth.issue_token("sb", ci)
    assert auth.tenant_for_token(old_token, "sb") == Tenant("acme")
    write({"old"})
    now[0] += RELOAD_CHECK_SECONDS
    assert auth.tenant_for_token(old_token, "sb") is None
    assert not auth.still_valid(old)
    assert auth.tenant_for_token(ci_token, "sb") == Tenant("acme")
    assert auth.still_valid(ci)
    write(set(), tenant=False)
    now[0] += RELOAD_CHECK_SECONDS
    assert auth.tenant_for_token(ci_token, "sb") is None
    assert not auth.still_valid(ci)


def test_a_token_without_its_key_id_is_refused() -> None:
    claims = {
        "sub": "sb-1",
        "ten": "default",
        "aud": Audience.CONTROL.value,
        "exp": time.time() + 60,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert make().tenant_for_token(token, "sb-1") is None


def test_each_token_opens_only_its_own_audience() -> None:
    """A token minted for one purpose is no token for any other (docs/security.md,
    "Credentials and surfaces"): control, traffic and preview tokens are told apart."""
    auth = make()
    tenant = auth.tenant_for_key("the-key")
    assert tenant is not None
    control = auth.issue_token("sb-1", tenant)
    traffic = auth.issue_token("sb-1", tenant, audience=Audience.TRAFFIC)
    preview = auth.issue_port_token("sb-1", 8080, tenant, 60)
    assert auth.tenant_for_token(control, "sb-1") is not None
    assert auth.tenant_for_token(traffic, "sb-1") is None
    assert auth.tenant_for_token(preview, "sb-1") is None
    assert auth.tenant_for_token(traffic, "sb-1", Audience.TRAFFIC) is not None
    assert auth.tenant_for_token(control, "sb-1", Audience.TRAFFIC) is None
    assert auth.tenant_for_port_token(control, "sb-1", 8080) is None
    assert auth.tenant_for_port_token(traffic, "sb-1", 8080) is None
    assert auth.tenant_for_port_token(preview, "sb-1", 8080) is not None
    assert auth.tenant_for_token(traffic, "sb-2", Audience.TRAFFIC) is None
