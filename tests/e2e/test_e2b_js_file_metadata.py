"""envd 0.6.2+ files (metadata, watch entries, `allowNetworkMounts`) through the stock `e2b`
JavaScript SDK (tests/e2b_js/file_metadata.test.mjs), issue 29."""

from __future__ import annotations

from tests.conftest import Server
from tests.e2e.test_e2b_js import run_suite


def test_stock_e2b_js_sdk_file_metadata(server: Server) -> None:
    done = run_suite(server, "file_metadata.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 4" in done.stdout, done.stdout[-3000:]
