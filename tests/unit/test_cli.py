"""The `insien` command with a bad environment: one line naming the variable, exit code 2,
never a traceback; `--version` and commands that need no settings still work (issue 10)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor


def insien(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insien", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),  # no developer .env
        check=False,
    )


def test_version_and_key_new_need_no_valid_settings() -> None:
    version = insien("--version", INSIEN_PORT="abc")
    assert version.returncode == 0
    assert version.stdout.startswith("insien ")
    key = insien("key", "new", "--id", "ci", INSIEN_PORT="abc")
    assert key.returncode == 0
    assert "sha256" in key.stdout


def test_an_invalid_variable_is_one_line_and_exit_code_2() -> None:
    commands = (("serve", "--no-build"), ("image", "build"))
    with ThreadPoolExecutor() as side_by_side:  # each is a second of interpreter start-up
        results = side_by_side.map(
            lambda args: insien(*args, INSIEN_PORT="abc", INSIEN_CPUS="-1"), commands
        )
    for result in results:
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "INSIEN_PORT" in lines[0]
        assert "INSIEN_CPUS" in lines[0]
