"""`manifest`: what the sandbox's own filesystem holds, so the server can record it when a
snapshot is taken or a sandbox is paused without its memory, and compare after (issue 32).

Only the container's root filesystem is walked (entries on another device are skipped: /proc,
/sys, /dev, the /tmp tmpfs, volumes, the agent's own mount, Docker's bind-mounted /etc files),
and only what the sandbox user could have written is recorded: entries the user owns and
everything under the user's home (everything, where user code runs as the agent itself).
Regular files get their size and SHA-256 until HASH_BUDGET bytes are hashed, then size only;
at most MAX_ENTRIES entries are recorded (`complete` says whether all were)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from typing import Any

from .context import Request

MAX_ENTRIES = 50_000
HASH_BUDGET = 256 * 1024 * 1024
CHUNK = 1024 * 1024

Entry = list[Any]
"""`[path, kind, size, digest]`: kind `f` (file), `d` (directory), `l` (symlink) or `o`
(anything else); size in bytes for files (0 otherwise); digest the file's SHA-256 in hex
(None once the budget is spent or the file could not be read), a symlink's target, or None."""


def _digest(path: str) -> str | None:
    """The SHA-256 of a regular file, None if it cannot be read as one (gone, replaced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        sha = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            sha.update(chunk)
        return sha.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def build(uid: int | None, home: str | None, root: str = "/") -> dict[str, Any]:
    """Walk `root`'s filesystem (depth first, names sorted) and record what `uid` could have
    written: see the module's docstring."""
    device = os.lstat(root).st_dev
    home_prefix = home.rstrip("/") + "/" if home and home != "/" else None
    entries: list[Entry] = []
    budget = HASH_BUDGET
    hashed = 0
    complete = True
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                found = sorted(listing, key=lambda entry: entry.name, reverse=True)
        except OSError:
            continue  # gone, or not a directory any more
        for entry in found:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device:
                continue  # a mount point: not this filesystem
            path = entry.path
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                stack.append(path)
            covered = (
                uid is None
                or info.st_uid == uid
                or (home_prefix is not None and (path + "/").startswith(home_prefix))
            )
            if not covered:
                continue
            if len(entries) >= MAX_ENTRIES:
                complete = False
                continue
            if stat.S_ISREG(mode):
                digest = None
                if info.st_size <= budget:
                    digest = _digest(path)
                    if digest is not None:
                        budget -= info.st_size
                        hashed += info.st_size
                entries.append([path, "f", info.st_size, digest])
            elif stat.S_ISDIR(mode):
                entries.append([path, "d", 0, None])
            elif stat.S_ISLNK(mode):
                try:
                    target: str | None = os.readlink(path)
                except OSError:
                    target = None
                entries.append([path, "l", 0, target])
            else:
                entries.append([path, "o", 0, None])
    entries.sort(key=lambda entry: entry[0])
    return {"entries": entries, "complete": complete, "hashedBytes": hashed}


async def handle_manifest(req: Request) -> dict[str, Any]:
    identity = req.identity
    home = identity.home if identity.switches else None
    found = await asyncio.to_thread(build, identity.uid, home)
    return {"type": "manifestResponse", **found}
