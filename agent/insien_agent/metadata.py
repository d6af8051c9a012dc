"""File metadata as E2B's envd keeps it: `user.e2b.<key>` extended attributes on the file.

`write` with `metadata` replaces the file's set (keys it does not name are removed, so an
overwrite never keeps a stale key); entries read it back (`stat`, `list`, watch events). The
limits are envd's: keys and values printable US-ASCII, a key at most 246 bytes (the kernel's
255-byte attribute name, less the prefix), the whole set at most 4096 bytes counted as prefix,
key and value per entry (ext4 holds a file's attributes in one block). A filesystem without
user attributes (gVisor's gofer mounts, procfs, tmpfs before Linux 6.6) keeps the content and
no metadata, which the answer says; reading never fails an entry, it leaves the metadata out.
Everything here runs in a file worker thread, as the sandbox user: the kernel checks the user's
right to read (list) or write (replace) the file's attributes.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .errors import BAD_REQUEST, AgentError

PREFIX = "user.e2b."
MAX_KEY_BYTES = 255 - len(PREFIX)
MAX_TOTAL_BYTES = 4096
UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def _printable(label: str, text: str) -> None:
    for offset, char in enumerate(text):
        if not " " <= char <= "~":
            raise AgentError(
                BAD_REQUEST,
                f"metadata {label} has a character that is not printable US-ASCII "
                f"({char!r} at {offset})",
            )


def validated(value: Any) -> dict[str, str] | None:
    """The `metadata` field of a request: None when absent, else a map envd would accept
    (BAD_REQUEST otherwise, before anything is written)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AgentError(BAD_REQUEST, "field 'metadata' must be an object of strings")
    total = 0
    for key, text in value.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise AgentError(BAD_REQUEST, "field 'metadata' must be an object of strings")
        if not key:
            raise AgentError(BAD_REQUEST, "a metadata key must not be empty")
        if len(key) > MAX_KEY_BYTES:
            raise AgentError(
                BAD_REQUEST, f"metadata key {key[:32]!r}… exceeds {MAX_KEY_BYTES} bytes"
            )
        _printable("key", key)
        _printable(f"value for key {key!r}", text)
        total += len(PREFIX) + len(key) + len(text)
    if total > MAX_TOTAL_BYTES:
        raise AgentError(BAD_REQUEST, f"metadata takes {total} bytes, over {MAX_TOTAL_BYTES}")
    return dict(value)


def replace(fd: int, metadata: dict[str, str]) -> bool:
    """Make the open file's `user.e2b.*` attributes exactly `metadata`; False when its
    filesystem has no user attributes (nothing changed), other failures raise OSError."""
    try:
        present = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return False
        raise
    for name in present:
        if name.startswith(PREFIX) and name[len(PREFIX) :] not in metadata:
            try:
                os.removexattr(fd, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    try:
        for key, text in metadata.items():
            os.setxattr(fd, PREFIX + key, text.encode("ascii"))
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return False
        raise
    return True


def read(target: int | str) -> dict[str, str] | None:
    """The `user.e2b.*` attributes of an open file or a path (a symlink is followed, as envd
    does), prefix stripped; None when there are none or they cannot be read. An attribute set
    inside the sandbox may hold any bytes: one whose name or value is not UTF-8 is skipped, and
    so is one past MAX_TOTAL_BYTES in all (names in order: ext4 never holds more, tmpfs could),
    so a listing of many files stays bounded."""
    try:
        names = sorted(os.listxattr(target))
    except OSError:
        return None
    found: dict[str, str] = {}
    total = 0
    for name in names:
        key = name[len(PREFIX) :]
        if not name.startswith(PREFIX) or not key:
            continue
        try:
            key.encode("utf-8")  # a name that is not UTF-8 arrives with surrogate escapes
            value = os.getxattr(target, name)
            text = value.decode("utf-8")
        except (OSError, UnicodeError):
            continue
        if total + len(name) + len(value) > MAX_TOTAL_BYTES:
            continue
        total += len(name) + len(value)
        found[key] = text
    return found or None
