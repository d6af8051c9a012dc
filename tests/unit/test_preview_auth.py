"""Insien's preview credentials (api/preview_auth.py): read from the request, kept out of what
the app is sent. Who is admitted is the gateway's, tried end to end in tests/attacks."""

from __future__ import annotations

from insien.api.preview_auth import (
    COOKIE,
    TOKEN_PARAM,
    cookie_value,
    without_preview_cookie,
    without_token,
)


def test_a_cookie_is_found_by_its_exact_name() -> None:
    headers = {"cookie": f"theme=dark; {COOKIE}=tok-1; {COOKIE}x=other"}
    assert cookie_value(headers, COOKIE) == "tok-1"
    assert cookie_value(headers, "theme") == "dark"
    assert cookie_value(headers, "missing") is None
    assert cookie_value({}, COOKIE) is None


def test_the_app_gets_its_own_cookies_and_never_the_preview_one() -> None:
    both = f"theme=dark; {COOKIE}=tok-1; session=abc".encode()
    assert without_preview_cookie(both) == b"theme=dark; session=abc"
    assert without_preview_cookie(f"{COOKIE}=tok-1".encode()) is None
    assert without_preview_cookie(b"session=abc") == b"session=abc"


def test_the_app_gets_its_query_without_the_preview_token() -> None:
    assert without_token({TOKEN_PARAM: "tok-1", "page": "2"}) == {"page": "2"}
    assert without_token({"page": "2"}) == {"page": "2"}
