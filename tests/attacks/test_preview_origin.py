"""A hostile page served by a sandbox's port, opened by path (on the API's own origin) in a real
headless Chromium, by a user who is logged into the console and has opened a preview of their
own sandbox (issue 27, V3). Before the second pass the page could register a service worker
over `/` (which then controls `/console` and sees every request's key), read the victim's
preview through the browser's path-scoped cookie, read the console's key from the tab's
session storage, and set cookies for the whole origin. Now a path-form answer is sandboxed into
an opaque origin and its origin-wide headers are dropped (docs/security.md, "Preview
origins"): each of those fails."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server
from tests.tools import require_tool

pytestmark = pytest.mark.docker

SUITE = Path(__file__).resolve().parent.parent / "js_browser"
PORT = 8000

HOSTILE = """
import http.server

PAGE = '''<!doctype html><title>hostile</title><body>hostile<script>
window.findings = {};
(async () => {
  const f = window.findings;
  try { f.cookie = document.cookie; } catch (e) { f.cookie = 'blocked: ' + e.name; }
  try { f.key = sessionStorage.getItem('insien.apiKey'); }
  catch (e) { f.key = 'blocked: ' + e.name; }
  try { f.storedKeys = Object.keys(sessionStorage); }
  catch (e) { f.storedKeys = 'blocked: ' + e.name; }
  try {
    await navigator.serviceWorker.register('PREFIX/sw.js', { scope: '/' });
    f.worker = 'registered';
  } catch (e) { f.worker = 'blocked: ' + e.name; }
  try {
    const r = await fetch('VICTIM', { credentials: 'include' });
    f.victim = r.status + ' ' + (await r.text());
  } catch (e) { f.victim = 'blocked: ' + e.name; }
  try {
    const r = await fetch('/console', { credentials: 'include' });
    f.console = r.status + ' ' + (await r.text()).slice(0, 40);
  } catch (e) { f.console = 'blocked: ' + e.name; }
  window.done = true;
})();
</script>'''

WORKER = "self.addEventListener('fetch', (e) => e.respondWith(new Response('owned')));"


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        worker = self.path.endswith('sw.js')
        body = (WORKER if worker else PAGE).encode()
        self.send_response(200)
        kind = 'text/javascript' if worker else 'text/html'
        self.send_header('Content-Type', kind)
        self.send_header('Service-Worker-Allowed', '/')
        self.send_header('Set-Cookie', 'evil=1; Path=/')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(('127.0.0.1', 8000), App).serve_forever()
"""

VICTIM = """
import http.server

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'victim-secret'
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(('127.0.0.1', 8000), App).serve_forever()
"""


def _serve(box: Sandbox, app: str) -> None:
    box.files.write("app.py", app)
    box.commands.run("python3 app.py", background=True)
    probe = f"import socket; socket.create_connection(('127.0.0.1', {PORT}))"
    deadline = time.monotonic() + 30
    while box.commands.run("python3", ["-c", probe]).exit_code != 0:
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.1)


def test_a_path_form_answer_keeps_nothing_of_the_api_origin(server: Server) -> None:
    """Checked on the wire, without a browser: what the app sends for the whole origin is
    dropped, and the page is sandboxed."""
    with Sandbox(api_key=server.api_key, base_url=server.url) as box:
        _serve(box, HOSTILE.replace("PREFIX", "").replace("VICTIM", "/"))
        answer = httpx.get(
            f"{server.url}/sandbox/{box.sandbox_id}/ports/{PORT}/", headers=server.headers
        )
    assert answer.status_code == 200
    assert "set-cookie" not in answer.headers
    assert "service-worker-allowed" not in answer.headers
    policy = answer.headers["content-security-policy"]
    assert policy.startswith("sandbox ")
    assert "allow-same-origin" not in policy


def test_a_hostile_preview_cannot_reach_the_console_or_another_preview(server: Server) -> None:
    node = require_tool("node", "apt-get install nodejs npm")
    chromium = require_tool("chromium", "apt-get install chromium")
    if not (SUITE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/js_browser has no node_modules: `nox -s tests` runs `npm ci` there")
    with (
        Sandbox(api_key=server.api_key, base_url=server.url) as victim,
        Sandbox(api_key=server.api_key, base_url=server.url) as attacker,
    ):
        victim_path = f"/sandbox/{victim.sandbox_id}/ports/{PORT}/secret"
        prefix = f"/sandbox/{attacker.sandbox_id}/ports/{PORT}"
        _serve(victim, VICTIM)
        _serve(attacker, HOSTILE.replace("PREFIX", prefix).replace("VICTIM", victim_path))
        victim_url = victim.ports.url(PORT, expires=600).replace("/?", "/secret?")
        hostile_url = attacker.ports.url(PORT, expires=600)
        done = subprocess.run(
            [node, "preview_origin.mjs", server.url, server.api_key, hostile_url, victim_url],
            cwd=SUITE,
            env={"PATH": "/usr/bin:/bin", "CHROMIUM": chromium, "HOME": "/tmp"},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.get("error") is None, result
    # the user's own preview works in the browser, cookie and all
    assert result["victimStatus"] == 200
    assert result["victimText"] == "victim-secret"
    assert result["hostileStatus"] == 200
    attack = result["attack"]
    assert attack["worker"].startswith("blocked"), attack
    assert "victim-secret" not in attack["victim"], attack
    assert server.api_key not in json.dumps(attack), attack
    assert attack["key"] is None or attack["key"].startswith("blocked"), attack
    assert attack["cookie"] in ("", None) or attack["cookie"].startswith("blocked"), attack
    assert result["consoleWorkers"] == [], result
    assert result["consoleControlled"] is False, result
    assert not any(c.startswith("evil;") for c in result["cookies"]), result
