"""`@insien/sandbox`'s browser entry in a real browser (Debian's headless Chromium, driven by
playwright-core from tests/js_browser): a page served from another origin uses a server that
lists that origin in INSIEN_CORS_ORIGINS, over fetch and the browser's own WebSocket. A server
that does not list it is refused by the browser, and the SDK says so with a ConnectError."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server
from tests.sandbox_apps import PREVIEW_APP, PREVIEW_PAGE
from tests.tools import require_tool

ROOT = Path(__file__).parent.parent.parent
SUITE = ROOT / "tests" / "js_browser"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def page_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A static web server with the test page and the SDK's built files: another origin."""
    if not (ROOT / "clients" / "js" / "dist" / "browser.js").is_file():
        pytest.fail("clients/js is not built: `nox -s tests` builds it")
    site = tmp_path_factory.mktemp("site")
    shutil.copy(SUITE / "page.html", site / "page.html")
    shutil.copytree(ROOT / "clients" / "js" / "dist", site / "dist")
    handler = functools.partial(QuietHandler, directory=str(site))
    web = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()
    web.server_close()


def in_browser(origin: str, server: Server) -> dict[str, Any]:
    return open_page(f"{origin}/page.html?{urlencode({'url': server.url, 'key': server.api_key})}")


def open_page(url: str) -> dict[str, Any]:
    """Open `url` in headless Chromium and return what the page left in `window.result`."""
    node = require_tool("node", "apt-get install nodejs npm")
    chromium = require_tool("chromium", "apt-get install chromium")
    if not (SUITE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/js_browser has no node_modules: `nox -s tests` runs `npm ci` there")
    done = subprocess.run(
        [node, "run.mjs", url],
        cwd=SUITE,
        env={"PATH": "/usr/bin:/bin", "CHROMIUM": chromium, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_browser_entry_works_from_an_allowed_origin(page_origin: str) -> None:
    process, server = start_server({"INSIEN_CORS_ORIGINS": page_origin}, suffix="browser")
    try:
        result = in_browser(page_origin, server)
    finally:
        assert stop_server(process) == 0
    assert result.get("error") is None, result
    assert result["seed"] == ["Hello from a browser!\n", 0]
    assert result["file"] == "console.log('Hello from a browser!');"
    assert result["streamed"] == "a\nb\n"
    assert result["uploaded"] == 4
    assert result["downloaded"] == [1, 2, 3, 250]
    assert result["info"] == "running"
    assert result["connected"] == "again\n"  # Sandbox.connect in a browser (a fresh token)
    assert result["wrongKey"] == "UNAUTHORIZED"
    assert result["pageErrors"] == []


def test_an_origin_the_server_does_not_allow_is_refused(page_origin: str, server: Server) -> None:
    result = in_browser(page_origin, server)  # the session's server allows no web origin
    assert result["connect"] is True, result
    assert result["error"].startswith("ConnectError"), result


def test_a_preview_url_in_a_real_browser() -> None:
    """The browser flow: a preview URL opens an app in a sandbox with no key, on the port's own
    origin (`<port>-<id>.localhost:<server port>`: Chromium resolves `*.localhost` to
    loopback); the page's own relative fetch and its WebSocket are let in by the cookie the
    first answer set. The same app by path, on the API's origin, is sandboxed into an opaque
    origin (docs/security.md, "Preview origins"): it loads, but reaches nothing of the origin."""
    process, server = start_server({"INSIEN_DOMAIN": "localhost"}, "preview-origin")
    try:
        with Sandbox(api_key=server.api_key, base_url=server.url) as box:
            box.files.write("app/index.html", PREVIEW_PAGE)
            box.files.write("app/server.py", PREVIEW_APP)
            box.commands.run("python3 server.py 8600", cwd="app", background=True)
            probe = "import socket; socket.create_connection(('127.0.0.1', 8600), timeout=1)"
            for _ in range(100):
                if box.commands.run("python3", ["-c", probe]).exit_code == 0:
                    break
                time.sleep(0.1)
            url = box.ports.url(8600, expires=120)
            port = server.url.rpartition(":")[2]
            assert url.startswith(f"http://8600-{box.sandbox_id}.localhost:{port}/?insien_token=")
            result = open_page(url)
            token = url.partition("insien_token=")[2]
            by_path = f"{server.url}/sandbox/{box.sandbox_id}/ports/8600/?insien_token={token}"
            sandboxed = open_page(by_path)
    finally:
        assert stop_server(process) == 0
    assert result == {
        "fetched": "followed with the cookie",
        "echo": "echo: from the page",
        "pageErrors": [],
    }
    assert "fetched" not in sandboxed, sandboxed
    assert "Failed to fetch" in sandboxed["error"], sandboxed
