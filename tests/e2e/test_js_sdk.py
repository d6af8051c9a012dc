"""The JavaScript SDK (`clients/js`, `@insien/sandbox`) under node's test runner against a real
server; the packed tarball installed in a fresh project running the seed's example; the
example's Python twin; and the JS SDK resuming its calls across a server restart."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server
from tests.e2e.restartable import Restartable, restartable
from tests.tools import require_tool

__all__ = ["restartable"]  # the fixture, used by name

ROOT = Path(__file__).parent.parent.parent
PACKAGE = ROOT / "clients" / "js"
EXAMPLES = ROOT / "examples"


def node() -> str:
    found = require_tool("node", "apt-get install nodejs npm")
    if not (PACKAGE / "dist" / "index.js").is_file():
        pytest.fail("clients/js is not built: `nox -s tests` runs `npm ci` and `npm run build`")
    return found


def client_env(server: Server) -> dict[str, str]:
    return {**os.environ, "INSIEN_URL": server.url, "INSIEN_API_KEY": server.api_key}


def test_js_sdk_suite(server: Server) -> None:
    done = subprocess.run(
        [node(), "--test", "--test-reporter=spec", "test/"],
        cwd=PACKAGE,
        env=client_env(server),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "fail 0" in done.stdout, done.stdout[-3000:]
    assert "pass 16" in done.stdout, done.stdout[-3000:]


def test_seed_example_from_the_packed_tarball(server: Server, tmp_path: Path) -> None:
    """`npm pack` makes an installable package: a fresh project installs it and runs the seed's
    example, `import { Sandbox } from '@insien/sandbox'` and all."""
    npm = require_tool("npm", "apt-get install nodejs npm")
    node()
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tarball = tmp_path / json.loads(packed.stdout)[0]["filename"]
    files = {entry["path"] for entry in json.loads(packed.stdout)[0]["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/browser.js", "package.json"} <= files
    assert not any(path.startswith(("src/", "test/", "node_modules/")) for path in files)
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "try-insien", "type": "module"}')
    subprocess.run(
        [npm, "install", "--prefer-offline", "--no-audit", "--no-fund", str(tarball)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    shutil.copy(EXAMPLES / "js" / "index.js", project / "index.js")
    ran = subprocess.run(
        [node(), "index.js"],
        cwd=project,
        env=client_env(server),  # the example names only the key; the URL is the SDK's default
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("v"), ran.stdout  # node --version, inside the sandbox
    assert "console.log('Hello!');" in lines
    assert any(line.endswith(" hello.js") for line in lines), ran.stdout


def test_python_twin_of_the_seed_example(server: Server) -> None:
    ran = subprocess.run(
        [sys.executable, str(EXAMPLES / "python" / "hello.py")],
        env=client_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("v"), ran.stdout
    assert "console.log('Hello!');" in lines
    assert any(line.endswith(" hello.js") for line in lines), ran.stdout


def until_sleeping(server: Server, running: str, count: int) -> None:
    """Until `count` `sleep` commands run in the sandbox the driver named in its `RUNNING <id>`
    line: the calls it has in flight have reached the sandbox."""
    said, sandbox_id = running.split()
    assert said == "RUNNING", running
    with Sandbox.connect(sandbox_id, server.api_key, server.url) as box:
        deadline = time.monotonic() + 15
        while box.commands.run("pgrep", ["-c", "-x", "sleep"]).stdout != f"{count}\n":
            assert time.monotonic() < deadline, "the driver's commands never started"
            time.sleep(0.05)


def test_js_sdk_calls_in_flight_get_their_answers_across_a_restart(
    restartable: Restartable,
) -> None:
    server = restartable.start()
    env = {
        **os.environ,
        "INSIEN_URL": server.url,
        "INSIEN_API_KEY": restartable.env["INSIEN_API_KEY"],
    }
    driver = subprocess.Popen(
        [node(), str(ROOT / "tests" / "js_sdk" / "resume.mjs")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        until_sleeping(server, driver.stdout.readline(), 2)
        restartable.kill()
        time.sleep(1.5)
        restartable.start()
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "early": "early\n",
        "late": "late\n",
        "after": "after\n",
    }


def test_js_sdk_in_a_browser_reconnects_with_a_fresh_token_after_a_restart(
    restartable: Restartable,
) -> None:
    """A browser's WebSocket cannot send the key header, so the agent URL's token is all that
    authenticates it; a server restarted with a new INSIEN_JWT_SECRET refuses the old token,
    and the SDK asks for a new one (POST /sandbox/<id>/connect) instead of giving up."""
    server = restartable.start()
    driver = driven(server, "resume_browser.mjs", restartable.env["INSIEN_API_KEY"])
    try:
        assert driver.stdout is not None
        until_sleeping(server, driver.stdout.readline(), 1)
        restartable.kill()
        time.sleep(1)
        restartable.start(INSIEN_JWT_SECRET=secrets.token_urlsafe(32))
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"late": "late\n", "after": "after\n"}


def driven(server: Server, script: str, key: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "INSIEN_URL": server.url, "INSIEN_API_KEY": key or server.api_key}
    return subprocess.Popen(
        [node(), str(ROOT / "tests" / "js_sdk" / script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_js_sdk_fails_clearly_once_the_reconnect_window_has_passed(
    restartable: Restartable,
) -> None:
    server = restartable.start()
    driver = driven(server, "lost.mjs", restartable.env["INSIEN_API_KEY"])
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "RUNNING"
        restartable.kill()  # and it does not come back
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["error"] == "SandboxClosedError", (outcome, err[-2000:])
    assert "connection lost for over 2s" in outcome["message"]
    assert 2000 <= outcome["ms"] < 30000


def test_js_sdk_rate_limit_error_carries_code_and_retry_after() -> None:
    process, server = start_server({"INSIEN_MAX_SANDBOXES": "1"}, suffix="js-limits")
    try:
        driver = driven(server, "limits.mjs")
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err[-3000:]
    finally:
        assert stop_server(process) == 0
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["rateLimit"] is True, outcome
    assert (outcome["status"], outcome["code"]) == (429, "QUOTA_EXCEEDED")
    assert outcome["detail"]
    assert outcome["retryAfter"] >= 1
