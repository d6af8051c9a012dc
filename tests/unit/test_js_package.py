"""`@insien/sandbox` (clients/js) packs with its compiled `dist/` from a checkout that has
never been built: its `prepare` script runs the build, as npm's convention asks, for `npm pack`
and `npm install <folder>` alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.tools import require_tool

PACKAGE = Path(__file__).parent.parent.parent / "clients" / "js"
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "README.md", "src")
"""What a clean checkout of clients/js holds: no `dist/`, no `node_modules/`."""


def npm() -> str:
    """npm, or a skip where it is missing (a failure in CI, which installs it)."""
    return require_tool("npm", "apt-get install nodejs npm")


def test_npm_pack_of_a_clean_checkout_lists_dist(tmp_path: Path) -> None:
    checkout = tmp_path / "js"
    checkout.mkdir()
    for name in SOURCES:
        source = PACKAGE / name
        if source.is_dir():
            shutil.copytree(source, checkout / name)
        else:
            shutil.copy(source, checkout / name)
    # The pinned devDependencies (TypeScript) only, no lifecycle scripts: nothing is built yet.
    installed = subprocess.run(
        [npm(), "ci", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert not (checkout / "dist").exists()
    packed = subprocess.run(
        [npm(), "pack", "--dry-run", "--json"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert packed.returncode == 0, packed.stderr[-3000:]
    files = {entry["path"] for entry in json.loads(packed.stdout)[0]["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/browser.js", "package.json"} <= files
    assert not any(path.startswith(("src/", "node_modules/")) for path in files)
