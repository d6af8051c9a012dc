"""The runtime the agent brings (issue 31), checked on this host without Docker: the bundle
runs the agent's whole import graph through its own loader with nothing from the host's
Python, it is the same bytes every time (the agent volume is named after it), and the agent
starts its own interpreter again exactly as the container started it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from insien._resources import agent_package_dir
from insien.runtime import agent_runtime
from insien.runtime.agent_runtime import LIB_DIR, PYTHON, Bundle, build, interpreter_command
from insien_agent import selfexec
from insien_agent.settings import LOADER_VARIABLES, user_environment

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the runtime is made on Linux")

PROBE = """
import importlib, json, os, sys
sys.path.insert(0, sys.argv[1])
for name in sorted(os.listdir(os.path.join(sys.argv[1], "insien_agent"))):
    if name.endswith(".py"):
        importlib.import_module(f"insien_agent.{name[:-3]}")
import encodings.idna, json, asyncio, ctypes, pty, select, socket, subprocess, termios
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items()}))
"""


@pytest.fixture(scope="module")
def made() -> Bundle:
    return build()


def test_the_bundle_runs_the_agents_imports_with_nothing_of_the_hosts(
    made: Bundle, tmp_path: Path
) -> None:
    with tarfile.open(fileobj=io.BytesIO(agent_runtime.archive(made.files))) as tar:
        tar.extractall(tmp_path, filter="tar")
    root = tmp_path / "rt"
    loader = root / "lib" / Path(made.loader).name
    command = interpreter_command(str(loader))
    # The bundle's own paths, here under tmp_path instead of /opt/insien.
    command = [
        str(root / "lib")
        if part == LIB_DIR
        else str(root / "bin/python3")
        if part == PYTHON
        else part
        for part in command
    ]
    env = {"PATH": "/usr/bin:/bin"}  # nothing of the host's Python or loader settings
    ran = subprocess.run(
        [*command, "-I", "-S", "-c", PROBE, str(agent_package_dir().parent)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    files = json.loads(ran.stdout)
    assert "insien_agent.dispatch" in files
    outside = {
        name: file
        for name, file in files.items()
        if file
        and not file.startswith(str(tmp_path))
        and not file.startswith(str(agent_package_dir()))
    }
    assert outside == {}
    # Its own libraries, not the host's: every mapped library is the bundle's.
    maps = subprocess.run(
        [*command, "-I", "-S", "-c", "print(open('/proc/self/maps').read())"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    mapped = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    assert mapped
    assert all(path.startswith(str(tmp_path)) for path in mapped), mapped


def test_the_agent_starts_its_interpreter_as_the_container_did(
    made: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", PYTHON)
    monkeypatch.setenv(selfexec.LOADER_ENV, made.loader)
    assert selfexec.own_interpreter() == interpreter_command(made.loader)
    assert made.command("/x")[: len(interpreter_command(made.loader))] == selfexec.own_interpreter()
    monkeypatch.delenv(selfexec.LOADER_ENV)
    assert selfexec.own_interpreter() == [PYTHON]
    monkeypatch.setenv(selfexec.PYTHON_ENV, "/usr/local/bin/python3")
    assert selfexec.image_python() == "/usr/local/bin/python3"


def test_the_bundle_is_the_same_bytes_every_time_and_when_cached(
    made: Bundle, tmp_path: Path
) -> None:
    """The agent volume is named after these bytes: every server of one build must agree."""
    again = build(tmp_path)
    assert agent_runtime.archive(again.files) == agent_runtime.archive(made.files)
    (cached,) = tmp_path.glob(f"{agent_runtime.CACHE_PREFIX}*.tar")
    assert build(tmp_path).digest == made.digest
    cached.write_bytes(b"not a tar")  # a cache cut short is made again
    assert build(tmp_path).digest == made.digest


def test_the_images_loader_variables_reach_user_commands_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The container has them blank (the agent's loader reads them), the agent hands the
    image's values to user commands, and nothing else of its own."""
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setenv(
        LOADER_VARIABLES,
        json.dumps({"LD_PRELOAD": "/lib/x.so", "LD_LIBRARY_PATH": "/opt/cuda", "PATH": "/evil"}),
    )
    monkeypatch.setenv(selfexec.LOADER_ENV, "/opt/insien/rt/lib/ld.so")
    env = user_environment()
    assert env["LD_PRELOAD"] == "/lib/x.so"
    assert env["LD_LIBRARY_PATH"] == "/opt/cuda"
    assert env["PATH"] == os.environ["PATH"]  # only what the container has blank comes back
    assert not [name for name in env if name.startswith("INSIEN_AGENT_")]
