"""The web console: `GET /console`, one page of plain HTML and JavaScript over this server's
own API (static/console/; xterm.js vendored there by `nox -s console-assets`, no CDN). The
page holds no secret: the API key is typed into it and kept in the tab's session storage."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from quart import Blueprint, Response, request

from ..protocol import ErrorCode
from .errors import ApiError
from .openapi import operation

ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "xterm.js": "text/javascript; charset=utf-8",
    "xterm.css": "text/css; charset=utf-8",
    "addon-fit.js": "text/javascript; charset=utf-8",
}
POLICY = (
    "default-src 'none'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
    "style-src {assets} 'unsafe-inline'; script-src {assets}; font-src {assets}; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; worker-src 'none'"
)
"""Only the console's own files: scripts and styles from `/console/static/` alone, so nothing
else this origin serves (a sandbox's preview by path included) can run as the console;
xterm.js sets styles inline."""


def _read(name: str) -> bytes:
    return files("insien.api").joinpath("static/console", name).read_bytes()


def _guarded(body: bytes, content_type: str) -> Response:
    response = Response(body, content_type=content_type)
    assets = f"{request.scheme}://{request.host}/console/static/"
    response.headers["Content-Security-Policy"] = POLICY.format(assets=assets)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def console_blueprint() -> Blueprint:
    bp = Blueprint("console", __name__)

    @bp.get("/console")
    @operation(
        summary="The web console (log in with an API key)",
        answer="html",
        auth=False,
        tag="meta",
    )
    async def console_page() -> Any:
        page = _guarded(_read("index.html"), "text/html; charset=utf-8")
        page.headers["Cache-Control"] = "no-store"
        return page

    @bp.get("/console/static/<name>")
    async def console_asset(name: str) -> Any:
        content_type = ASSETS.get(name)
        if content_type is None:  # only the files listed: no path reaches anything else
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no console asset {name!r}")
        asset = _guarded(_read(name), content_type)
        asset.headers["Cache-Control"] = "public, max-age=3600"
        return asset

    return bp
