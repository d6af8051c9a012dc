"""The stock `e2b` JavaScript SDK (tests/e2b_js, pinned in its package.json) under node's test
runner, pointed at the session's server by the three E2B variables alone."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server

SUITE = Path(__file__).parent.parent / "e2b_js"


def test_stock_e2b_js_sdk(server: Server) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the JavaScript suites (.ci/run installs it)"
    if not (SUITE / "node_modules" / "e2b").is_dir():
        pytest.fail("tests/e2b_js has no node_modules: `nox -s tests` runs `npm ci` there")
    env = {
        **os.environ,
        "E2B_API_URL": f"{server.url}/e2b",
        "E2B_SANDBOX_URL": f"{server.url}/e2b",
        "E2B_API_KEY": server.api_key,
    }
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "e2b.test.mjs"],
        cwd=SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 6" in done.stdout, done.stdout[-3000:]
