"""The stock `e2b` JavaScript SDK (tests/e2b_js, pinned in its package.json) under node's test
runner, pointed at the session's server by the three E2B variables alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.tools import require_tool

SUITE = Path(__file__).parent.parent / "e2b_js"


def run_suite(server: Server, name: str) -> subprocess.CompletedProcess[str]:
    node = require_tool("node", "apt-get install nodejs npm")
    if not (SUITE / "node_modules" / "e2b").is_dir():
        pytest.fail("tests/e2b_js has no node_modules: `nox -s tests` runs `npm ci` there")
    env = {
        **os.environ,
        "E2B_API_URL": f"{server.url}/e2b",
        "E2B_SANDBOX_URL": f"{server.url}/e2b",
        "E2B_API_KEY": server.api_key,
    }
    return subprocess.run(
        [node, "--test", "--test-reporter=spec", name],
        cwd=SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_stock_e2b_js_sdk(server: Server) -> None:
    done = run_suite(server, "e2b.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 6" in done.stdout, done.stdout[-3000:]


def test_stock_e2b_js_sdk_files_as_envd(server: Server) -> None:
    """Files as E2B's envd treats them (issue 29): absolute paths, removing what is not there,
    an upload's write seen by a watcher, depth-first listings, symlinks by where they lead."""
    done = run_suite(server, "files_fidelity.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 5" in done.stdout, done.stdout[-3000:]


def test_stock_code_interpreter_js_sdk(server: Server, interpreter_image: str) -> None:
    """`@e2b/code-interpreter` (pinned in tests/e2b_js) against the interpreter's front."""
    done = run_suite(server, "interpreter.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 1" in done.stdout, done.stdout[-3000:]
