"""`insien mcp --http`'s bearer check and its loopback test, without a network."""

from __future__ import annotations

import pytest
from starlette.types import Receive, Scope, Send

from insien_sandbox.cli._mcp_server import BearerGate, is_loopback

TOKEN = "s3cret-token-of-some-length"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("never called")


def scope_with(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "headers": list(headers)}


@pytest.mark.parametrize(
    "value",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "],
)
def test_the_token_is_accepted(value: str) -> None:
    gate = BearerGate(app, TOKEN)
    assert gate.allows(scope_with((b"authorization", value.encode())))


@pytest.mark.parametrize(
    "value",
    ["", TOKEN, f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", "Bearer "],
)
def test_anything_else_is_refused(value: str) -> None:
    gate = BearerGate(app, TOKEN)
    assert not gate.allows(scope_with((b"authorization", value.encode())))
    assert not gate.allows(scope_with())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("my-laptop.local", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
