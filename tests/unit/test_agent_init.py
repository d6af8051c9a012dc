"""The agent's init (agent/insien_agent/init.py), run as PID 1 of a new PID namespace as it is
in a pod: orphans are reaped, the stop signal reaches the agent, and its exit code is the
container's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

AS_PID1 = """
import os, signal, subprocess, sys, time
sys.path.insert(0, {agent!r})
from insien_agent.init import become_init_if_pid1
{init}
"""


def run_as_pid1(body: str, *, init: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("a new PID namespace needs root")
    script = AS_PID1.format(agent=str(AGENT), init="become_init_if_pid1()" if init else "")
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script + body],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


ORPHAN = textwrap.dedent(
    """
    print("agent pid 1:", os.getpid() == 1)
    # sh leaves a background child behind: it is reparented to PID 1 and dies there.
    started = subprocess.run(
        ["sh", "-c", "sleep 0.2 >/dev/null & echo $!"], check=True, capture_output=True
    )
    orphan = int(started.stdout)

    def state(pid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return None

    deadline = time.monotonic() + 10
    while state(orphan) != SETTLED:
        assert time.monotonic() < deadline, f"the orphan is still {state(orphan)}"
        time.sleep(0.01)
    states = [state(int(name)) for name in os.listdir("/proc") if name.isdigit()]
    print("zombies", states.count("Z"))
    sys.exit(7)
    """
)
"""Once the orphan has settled (gone with the init, a zombie without one), how many zombies
there are."""


def test_orphans_are_reaped_and_the_agents_exit_code_is_kept() -> None:
    done = run_as_pid1(ORPHAN.replace("SETTLED", "None"))  # reaped, so gone
    assert done.stdout.split("\n")[:2] == ["agent pid 1: False", "zombies 0"], done.stderr
    assert done.returncode == 7


def test_without_the_init_the_orphan_stays_a_zombie() -> None:
    """The control: the same program as PID 1 itself leaves the zombie the init prevents."""
    done = run_as_pid1(ORPHAN.replace("SETTLED", "'Z'"), init=False)  # PID 1 never reaps
    assert done.stdout.split("\n")[:2] == ["agent pid 1: True", "zombies 1"], done.stderr


def test_a_stop_signal_to_pid_1_reaches_the_agent() -> None:
    done = run_as_pid1(
        textwrap.dedent(
            """
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
            # Sent at once, likely before PID 1 has its handlers in place: it keeps the
            # signal pending (blocked across the fork) and passes it on once they are.
            os.kill(1, signal.SIGTERM)
            time.sleep(10)
            sys.exit(1)
            """
        )
    )
    assert done.returncode == 42, done.stderr


def test_an_agent_killed_by_a_signal_exits_as_a_shell_would_say() -> None:
    done = run_as_pid1("os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == 128 + 9, done.stderr
