"""`pytest -m "not docker"` (`nox -s tests -- -m "not docker"`) is the fast suite: the `docker`
mark that tests/conftest.py puts on tests/e2e and tests/attacks is there before pytest's `-m`
filter runs, so none of those suites (which drive real containers) is selected. Run as part of
the fast suite, the check reads that run's own selection; otherwise it collects apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DESELECTED

ROOT = Path(__file__).parent.parent.parent
DOCKER_SUITES = ("tests/e2e/", "tests/attacks/")
REPORTER = """
import os

def pytest_deselected(items):
    with open(os.environ["DESELECTED_TO"], "a") as out:
        out.writelines(item.nodeid + "\\n" for item in items)
"""
"""A plugin for the run below: the node ids `-m` took out, one a line, to a file."""


def collected_apart(tmp_path: Path) -> tuple[list[str], list[str]]:
    """What `-m "not docker"` selects and takes out of the container suites and one unit
    module, collected by a pytest of its own."""
    (tmp_path / "deselected_reporter.py").write_text(REPORTER)
    deselected_to = tmp_path / "deselected.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "INSIEN_K8S")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env["DESELECTED_TO"] = str(deselected_to)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"),
            *("-p", "deselected_reporter", "-m", "not docker"),
            # the container suites and one unit module: what the filter must take out and
            # what it must keep, without collecting the whole unit suite a second time
            *(*DOCKER_SUITES, "tests/unit/test_layers.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    selected = [line for line in done.stdout.splitlines() if line.startswith("tests/")]
    deselected = deselected_to.read_text().splitlines() if deselected_to.exists() else []
    return selected, deselected


def test_not_docker_selects_no_container_suite(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = request.config
    if (
        config.option.markexpr == "not docker"
        and not config.option.keyword
        and not config.option.deselect
        and config.stash.get(DESELECTED, [])
    ):
        # This run is the fast suite itself, the container suites collected and taken out
        # by the filter alone: what it selected is the answer, at no cost.
        selected = [item.nodeid for item in request.session.items]
        deselected = [item.nodeid for item in config.stash[DESELECTED]]
    else:
        selected, deselected = collected_apart(tmp_path)
    assert any(node.startswith("tests/unit/") for node in selected)
    assert [node for node in selected if node.startswith(DOCKER_SUITES)] == []
    # What the filter took out is the container suites, all of them collected first.
    assert len(deselected) > 100
    assert [node for node in deselected if not node.startswith(DOCKER_SUITES)] == []
