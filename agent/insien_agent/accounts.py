"""The image's accounts, read from /etc/passwd and /etc/group as data.

Not through the C library: glibc's `getpwuid` follows the image's /etc/nsswitch.conf, which
may name a module (`libnss_<name>.so.2`) that the loader then takes from the image's /lib:
code of the image's, loaded into the agent, which is root. Containers keep their accounts in
these two files; an account only a directory service knows is shown by number.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
MAX_BYTES = 4 * 1024 * 1024
"""More than any image's account files; a bigger one (or a FIFO, a device) is not read."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def _records(path: str, fields: int) -> list[list[str]]:
    """The file's colon-separated records with at least `fields` fields; none if it is not a
    regular file of sane size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_BYTES:
            return []
        data = os.read(fd, MAX_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        record = line.split(":")
        if len(record) >= fields and record[0] and not line.startswith("#"):
            records.append(record)
    return records


def _account(record: list[str]) -> Account | None:
    if not (record[2].isdigit() and record[3].isdigit()):
        return None
    return Account(record[0], int(record[2]), int(record[3]), record[5])


def user_by_uid(uid: int) -> Account | None:
    for record in _records(PASSWD, 7):
        account = _account(record)
        if account is not None and account.uid == uid:
            return account
    return None


def user_by_name(name: str) -> Account | None:
    for record in _records(PASSWD, 7):
        account = _account(record)
        if account is not None and account.name == name:
            return account
    return None


def group_name(gid: int) -> str | None:
    for record in _records(GROUP, 3):
        if record[2] == str(gid):
            return record[0]
    return None
