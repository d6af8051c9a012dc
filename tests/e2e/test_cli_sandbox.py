"""`insien sandbox …` as a user runs it: real processes against a real server; `shell` in a
real terminal (tmux), keys sent and the screen read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.tools import require_tool

INSIEN = str(Path(sys.executable).parent / "insien")


def insien(
    server: Server, *args: str, stdin: str | None = None, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INSIEN_URL": server.url, "INSIEN_API_KEY": key or server.api_key}
    return subprocess.run(
        [INSIEN, *args],
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def made(server: Server) -> Iterator[str]:
    created = insien(server, "sandbox", "create", "-q", "-m", "suite=cli", "--timeout", "600")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    yield sandbox_id
    insien(server, "sandbox", "kill", sandbox_id)


def test_create_list_info_kill(server: Server) -> None:
    created = insien(server, "sandbox", "create", "--json", "-m", "who=cli", "--memory", "256m")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    sandbox_id = info["sandboxId"]
    assert (info["state"], info["metadata"]) == ("running", {"who": "cli"})
    assert info["resources"]["memory"] == 256 * 1024 * 1024

    listed = insien(server, "sandbox", "list", "--json", "-m", "who=cli")
    assert [one["sandboxId"] for one in json.loads(listed.stdout)] == [sandbox_id]
    table = insien(server, "sandbox", "list", "--state", "running")
    assert table.returncode == 0
    assert "STATE" in table.stdout
    assert sandbox_id in table.stdout  # piped output keeps whole ids
    details = insien(server, "sandbox", "info", sandbox_id)
    assert "running" in details.stdout
    assert "who=cli" in details.stdout

    killed = insien(server, "sandbox", "kill", sandbox_id, "no-such-sandbox")
    assert killed.returncode == 1
    assert f"killed {sandbox_id}" in killed.stdout
    assert "no sandbox no-such-sandbox" in killed.stderr
    ended = json.loads(insien(server, "sandbox", "info", sandbox_id, "--json").stdout)
    assert (ended["state"], ended["endReason"]) == ("ended", "destroyed")


def test_exec_streams_and_exits_with_the_commands_code(server: Server, made: str) -> None:
    line = insien(server, "sandbox", "exec", made, "echo out; echo err >&2; exit 7")
    assert (line.returncode, line.stdout, line.stderr) == (7, "out\n", "err\n")
    direct = insien(server, "sandbox", "exec", made, "--cwd", "/tmp", "--", "ls", "-a", ".")
    assert direct.returncode == 0
    assert direct.stdout.split() == [".", ".."]
    fed = insien(server, "sandbox", "exec", "-i", made, "--", "tr", "a-z", "A-Z", stdin="shout")
    assert fed.stdout == "SHOUT"
    envs = insien(server, "sandbox", "exec", made, "-e", "GREETING=hi", "echo $GREETING")
    assert envs.stdout == "hi\n"
    slow = insien(server, "sandbox", "exec", made, "--timeout", "1", "--", "sleep", "30")
    assert slow.returncode == 124
    killed = insien(server, "sandbox", "exec", made, "kill -9 $$")
    assert killed.returncode == 128 + 9


def test_detach_then_logs(server: Server, made: str) -> None:
    started = insien(
        server, "sandbox", "exec", "-d", made, "for i in 1 2 3; do echo line $i; done; sleep 1.5"
    )
    assert started.returncode == 0, started.stderr
    pid = started.stdout.strip()
    assert pid.isdigit()
    caught_up = insien(server, "sandbox", "logs", made, pid)  # returns while it still runs
    assert caught_up.stdout == "line 1\nline 2\nline 3\n"
    followed = insien(server, "sandbox", "logs", made, pid, "--follow")
    assert followed.stdout == "line 1\nline 2\nline 3\n"
    agent_log = insien(server, "sandbox", "logs", made)
    assert agent_log.returncode == 0


def test_cp_both_ways(server: Server, made: str, tmp_path: Path) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    up = insien(server, "sandbox", "cp", str(local), f"{made}:inbox/")
    assert up.returncode == 0, up.stderr
    listed = insien(server, "sandbox", "exec", made, "--", "stat", "-c", "%s", "inbox/data.bin")
    assert listed.stdout.strip() == str(local.stat().st_size)
    back = tmp_path / "back"
    back.mkdir()
    down = insien(server, "sandbox", "cp", f"{made}:inbox/data.bin", str(back))
    assert down.returncode == 0, down.stderr
    assert (back / "data.bin").read_bytes() == local.read_bytes()
    assert sorted(p.name for p in back.iterdir()) == ["data.bin"]  # no partial file left

    neither = insien(server, "sandbox", "cp", str(local), str(back))
    assert neither.returncode == 1
    assert "one side is ID:path" in neither.stderr
    missing = insien(server, "sandbox", "cp", f"{made}:nope.txt", str(back))
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    assert sorted(p.name for p in back.iterdir()) == ["data.bin"]


def test_errors_are_one_line_and_exit_1(server: Server) -> None:
    wrong = insien(server, "sandbox", "list", key="not-a-key")
    assert wrong.returncode == 1
    assert "Traceback" not in wrong.stderr
    assert "401 UNAUTHORIZED" in wrong.stderr
    gone = insien(server, "sandbox", "exec", "no-such-sandbox", "true")
    assert gone.returncode == 1
    assert "404" in gone.stderr


def test_shell_is_a_real_terminal(server: Server, made: str) -> None:
    tmux = require_tool("tmux", "apt-get install tmux")
    session = f"insien-{made[:8]}"
    env = f"INSIEN_URL={server.url} INSIEN_API_KEY={server.api_key}"
    command = f"{env} {INSIEN} sandbox shell {made}; echo EXITED=$?; sleep 60"

    def screen() -> str:
        return subprocess.run(
            [tmux, "capture-pane", "-t", session, "-p"], capture_output=True, text=True, check=True
        ).stdout

    def keys(*sent: str) -> None:
        subprocess.run([tmux, "send-keys", "-t", session, *sent], check=True)

    def until(text: str) -> None:
        deadline = time.monotonic() + 20
        while text not in screen():
            assert time.monotonic() < deadline, f"never saw {text!r} in:\n{screen()}"
            time.sleep(0.1)

    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True
    )
    try:
        until(":~$")  # the sandbox's prompt (capture-pane drops trailing spaces)
        keys("echo $((6 * 7))", "Enter")
        until("\n42\n")
        keys("stty size", "Enter")
        until("40 120")
        subprocess.run([tmux, "resize-window", "-t", session, "-x", "100", "-y", "30"], check=True)
        # SIGWINCH reaches the CLI, which resizes the sandbox's terminal: asked until it has
        deadline = time.monotonic() + 20
        while "30 100" not in screen():
            assert time.monotonic() < deadline, f"never resized:\n{screen()}"
            keys("stty size", "Enter")
            time.sleep(0.2)
        keys("sleep 100", "Enter")
        deadline = time.monotonic() + 20
        while insien(server, "sandbox", "exec", made, "--", "pgrep", "-x", "sleep").returncode:
            assert time.monotonic() < deadline, f"the sleep never started:\n{screen()}"
        keys("C-c")  # goes to the sandbox: the sleep stops, the shell stays
        keys("echo still-here", "Enter")
        until("\nstill-here\n")
        keys("exit 3", "Enter")
        until("EXITED=3")
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
