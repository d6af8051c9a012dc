"""The web console (issue 16) in a real headless Chromium (Debian's, driven by playwright-core
from tests/js_browser/console.mjs): log in with the key, create a sandbox, type `echo hi` in
its terminal and see `hi`, upload and download a file, see its CPU, memory and events, destroy
it. The page loads nothing from another origin and never puts the key in a URL. Each step's
screenshot is left in artifacts/console/ (INSIEN_ARTIFACTS overrides the folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent
SUITE = ROOT / "tests" / "js_browser"


def artifacts() -> Path:
    folder = Path(os.environ.get("INSIEN_ARTIFACTS", ROOT / "artifacts")) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_console_page_is_self_contained(server: Server) -> None:
    page = httpx.get(f"{server.url}/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    # scripts from the console's own folder only: nothing else on this origin (a preview by
    # path included) can run as the console
    assert f"script-src {server.url}/console/static/;" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from a CDN
    for asset in re.findall(r"(?:src|href)=\"(/console/static/[^\"]+)\"", page.text):
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset
    assert httpx.get(f"{server.url}/console/static/../config.py").status_code == 404
    assert httpx.get(f"{server.url}/console/static/nope.js").status_code == 404


def test_the_console_in_a_real_browser(server: Server) -> None:
    node = require_tool("node", "apt-get install nodejs npm")
    chromium = require_tool("chromium", "apt-get install chromium")
    if not (SUITE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/js_browser has no node_modules: `nox -s tests` runs `npm ci` there")
    shots = artifacts()
    done = subprocess.run(
        [node, "console.mjs", server.url, server.api_key, str(shots)],
        cwd=SUITE,
        env={"PATH": "/usr/bin:/bin", "CHROMIUM": chromium, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.get("error") is None, result
    assert result["wrongKey"].startswith("UNAUTHORIZED"), result
    assert result["terminal"] == "hi"
    assert result["downloaded"] == "uploaded through the console\n"
    assert result["downloadName"] == "hello.txt"
    assert "purpose=console-test" in result["row"]
    assert "%" in result["row"]
    assert "MiB" in result["row"]
    assert result["destroyed"] is True
    assert result["keyInAUrl"] is False
    assert result["pageErrors"] == []
    for step in ("1-login", "2-terminal", "3-files-metrics-events", "4-destroyed"):
        assert (shots / f"{step}.png").stat().st_size > 10_000, step
    with Sandbox(api_key=server.api_key, base_url=server.url) as probe:  # the server is fine
        assert probe.commands.run("echo after").stdout == "after\n"
