"""The agent reads the image's accounts as data (agent/insien_agent/accounts.py): what glibc's
files module would answer for a container's /etc/passwd and /etc/group, and nothing (no hang,
no error) for a file that is not a regular one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from insien_agent import accounts
from insien_agent.accounts import Account


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "# a comment\n"
        "root:x:0:0:root:/root:/bin/bash\n"
        "broken line\n"
        "odd:x:uid:1:::\n"
        "user:x:1000:1000:User,,,:/home/user:/bin/bash\n"
        "nohome:x:1001:1001::/:/bin/sh\n"
    )
    group = tmp_path / "group"
    group.write_text("root:x:0:\nusers:x:100:user\nuser:x:1000:\n")
    monkeypatch.setattr(accounts, "PASSWD", str(passwd))
    monkeypatch.setattr(accounts, "GROUP", str(group))
    return tmp_path


def test_users_and_groups_are_found_by_number_and_name(files: Path) -> None:
    assert accounts.user_by_uid(1000) == Account("user", 1000, 1000, "/home/user")
    assert accounts.user_by_name("root") == Account("root", 0, 0, "/root")
    assert accounts.user_by_uid(1001) == Account("nohome", 1001, 1001, "/")
    assert accounts.user_by_uid(4242) is None
    assert accounts.user_by_name("odd") is None  # a malformed record counts for nothing
    assert accounts.group_name(100) == "users"
    assert accounts.group_name(4242) is None


def test_a_fifo_or_a_missing_file_is_no_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes it: reading would block forever
    monkeypatch.setattr(accounts, "PASSWD", str(fifo))
    monkeypatch.setattr(accounts, "GROUP", str(tmp_path / "missing"))
    assert accounts.user_by_uid(1000) is None
    assert accounts.group_name(0) is None
