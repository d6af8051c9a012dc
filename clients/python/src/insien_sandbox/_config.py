"""Where the SDK finds its service and key when the caller does not say."""

from __future__ import annotations

import os

DEFAULT_URL = "http://localhost:3000"


def resolve(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key or os.environ.get("INSIEN_API_KEY")
    if not key:
        from ._errors import InsienError

        raise InsienError("no API key: pass api_key=... or set INSIEN_API_KEY")
    url = (base_url or os.environ.get("INSIEN_URL") or DEFAULT_URL).rstrip("/")
    return key, url
