"""Programs the suite needs from the machine (docker-compose, chromium, node, npm, tmux, runsc).

A test whose program is missing skips with what to install on a developer's machine, and fails
in CI: `.ci/run` installs every one of them, so there a skip would hide a broken install step.
CI is recognised by CI=true (the harness runs `.ci/run` with it) or INSIEN_REQUIRE_TOOLS=1
(which `.ci/run` exports, for a run of it by hand).
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def tools_required() -> bool:
    """Whether a missing program fails its tests (CI) instead of skipping them."""
    return os.environ.get("CI") == "true" or os.environ.get("INSIEN_REQUIRE_TOOLS") == "1"


def missing(what: str, install: str) -> NoReturn:
    """Skip the test for want of `what` (`install` says how to get it), or fail it in CI."""
    if tools_required():
        pytest.fail(f"{what} is missing, and CI requires it ({install})")
    pytest.skip(f"{what} is missing ({install})")


def require_tool(name: str, install: str) -> str:
    """The path of program `name`, or `missing(name, install)`."""
    found = shutil.which(name)
    if found is None:
        missing(name, install)
    return found
