"""Which pids the agent believes its spawner helper about (agent/insien_agent/spawner.py):
the helper runs as the sandbox user, so a pid it reports is signalled only if /proc says it is
the helper's child and the user's. A command that ended at once can be caught being reaped,
when /proc already says parent 0: that is an exit, not a forgery (seen first in a pod)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from insien_agent import spawner as spawner_module
from insien_agent.identity import Identity
from insien_agent.spawner import Spawner

HELPER = 40


class Helper:
    pid = HELPER


def status(ppid: int, uid: int, state: str) -> str:
    return f"Name:\tsh\nState:\t{state}\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"


@pytest.mark.parametrize(
    ("ppid", "uid", "state", "believed"),
    [
        (HELPER, 1000, "S (sleeping)", True),  # the helper's child, the user's
        (0, 1000, "X (dead)", True),  # being reaped this instant
        (1, 1000, "S (sleeping)", False),  # not the helper's child
        (HELPER, 0, "S (sleeping)", False),  # root's: never the user's command
        (0, 0, "X (dead)", False),  # someone else's, dying or not
    ],
)
def test_a_reported_pid_is_believed_only_as_the_users_child(
    monkeypatch: pytest.MonkeyPatch, ppid: int, uid: int, state: str, believed: bool
) -> None:
    def fake_open(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
        assert path == "/proc/77/status"
        return io.StringIO(status(ppid, uid, state))

    monkeypatch.setattr(spawner_module, "open", fake_open, raising=False)
    spawner = Spawner(Identity(1000, 1000, "user", "/home/user"), "agent.pyz")
    spawner._helper = Helper()  # type: ignore[assignment]
    assert (spawner._doubt(77) is None) is believed
