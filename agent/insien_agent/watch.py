"""`watch`: filesystem events under a directory, from inotify, as the sandbox user.

Watches are added in a file worker thread, whose effective uid is the user's, so the kernel
checks that the user may read each directory. Events wait in a bounded queue; past it they are
dropped and counted, and the next batch says how many (`dropped`), so a storm of writes never
grows the agent's memory. Batches (`fsEvents`) go out as credit allows, like `output`.

As envd 0.6.3+ does, `includeEntry` adds to each create, write and chmod event the entry at
its path (described by `files.describe` as the user, when the batch goes out; none when it is
gone by then), and with `allowNetworkMounts: false` (envd's default; Insien's own is true) a
directory on NFS, CIFS/SMB or FUSE, where inotify misses other machines' changes, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import fields
from .context import Request
from .errors import BAD_REQUEST, NOT_A_DIRECTORY, TOO_LARGE, AgentError, from_os_error
from .files import describe, resolve

Message = dict[str, Any]

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
EVENT = struct.Struct("iIII")

MAX_QUEUED = 4096
"""Events waiting for credit; past this they are counted as dropped."""
MAX_BATCH = 256
MAX_WATCHES = 8192
"""Directories one recursive watch may cover."""
READ_BYTES = 64 * 1024
ENTRY_OPS = frozenset({"create", "write", "chmod"})
"""Events about an entry still at its path (a removed or renamed-away one has none)."""
NETWORK_FILESYSTEMS = {
    0x6969: "NFS",
    0xFF534D42: "CIFS",
    0x517B: "SMB",
    0xFE534D42: "SMB2",
    0x65735546: "FUSE",
}
"""statfs `f_type` magic numbers envd refuses to watch without `allowNetworkMounts`."""
STATFS_BYTES = 256
"""Room for `struct statfs` (120 bytes on 64-bit Linux); `f_type` is its first word."""


def _operations(mask: int) -> list[str]:
    ops = []
    if mask & (IN_CREATE | IN_MOVED_TO):
        ops.append("create")
    if mask & IN_MODIFY:
        ops.append("write")
    if mask & (IN_DELETE | IN_DELETE_SELF):
        ops.append("remove")
    if mask & IN_MOVED_FROM:
        ops.append("rename")
    if mask & IN_ATTRIB:
        ops.append("chmod")
    return ops


class _Inotify:
    """An inotify instance through libc (no third-party module in the agent)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        """Run in a file worker thread: the kernel checks the user's right to read `path`."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return int(wd)

    def close(self) -> None:
        os.close(self.fd)


def filesystem_type(path: str) -> int:
    """The statfs magic number of the filesystem `path` is on (run in a file worker)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(STATFS_BYTES)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def refuse_network_mount(path: str) -> None:
    """envd's check before watching without `allowNetworkMounts` (BAD_REQUEST on a network
    filesystem, whose changes made elsewhere inotify never sees)."""
    kind = NETWORK_FILESYSTEMS.get(filesystem_type(path))
    if kind is not None:
        raise AgentError(BAD_REQUEST, f"cannot watch path on network filesystem ({kind}): {path}")


def with_entries(root: str, events: list[Message]) -> None:
    """Add `entry` to the events that describe one (run in a file worker, as the user)."""
    for event in events:
        if event["op"] in ENTRY_OPS:
            full = os.path.join(root, event["name"]) if event["name"] else root
            # gone (or out of reach) by now: the event goes without it
            with contextlib.suppress(OSError, AgentError):
                event["entry"] = describe(full)


@dataclass
class Watcher:
    """One `watch` request: its watches, its queue, and the credit the server granted."""

    request: Request
    root: str
    recursive: bool
    inotify: _Inotify
    directories: dict[int, str] = field(default_factory=dict)
    """Watch descriptor -> the directory's path relative to the root ("" for the root)."""
    queue: deque[Message] = field(default_factory=deque)
    dropped: int = 0
    credit: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str | None = None

    def grant(self, n: int) -> None:
        self.credit += n
        self.wake.set()

    def add_tree(self, relative: str) -> list[str]:
        """Watch a directory (and with `recursive` what is under it); returns new subdirs."""
        found = []
        pending = [relative]
        while pending:
            current = pending.pop()
            if len(self.directories) >= MAX_WATCHES:
                raise AgentError(TOO_LARGE, f"more than {MAX_WATCHES} directories to watch")
            full = os.path.join(self.root, current) if current else self.root
            mask = MASK | (IN_ONLYDIR if not current else 0)
            try:
                wd = self.inotify.add(full, mask)
            except OSError:
                if not current:
                    raise
                continue  # a subdirectory gone or unreadable: watch the rest
            self.directories[wd] = current
            found.append(current)
            if self.recursive:
                try:
                    with os.scandir(full) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                pending.append(os.path.join(current, entry.name))
                except OSError:
                    pass
        return found

    def _enqueue(self, event: Message) -> None:
        if len(self.queue) >= MAX_QUEUED:
            self.dropped += 1
        else:
            self.queue.append(event)
        self.wake.set()

    def readable(self) -> list[str]:
        """Called by the event loop when inotify has events; returns directories to add."""
        try:
            data = os.read(self.inotify.fd, READ_BYTES)
        except BlockingIOError:
            return []
        new_dirs = []
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
            raw = data[offset + EVENT.size : offset + EVENT.size + length]
            offset += EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.dropped += 1
                self.wake.set()
                continue
            directory = self.directories.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:
                del self.directories[wd]
                if directory == "":
                    self.ended = "the watched directory was removed"
                    self.wake.set()
                continue
            name = os.fsdecode(raw.rstrip(b"\0"))
            relative = os.path.join(directory, name) if name else directory
            if not name and mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                continue  # the parent reports the entry itself
            for op in _operations(mask):
                self._enqueue({"name": relative, "op": op})
            if self.recursive and name and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                new_dirs.append(relative)
        return new_dirs

    def batch(self) -> Message:
        events = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
        message: Message = {"id": self.request.id, "type": "fsEvents", "events": events}
        if self.dropped:
            message["dropped"] = self.dropped
            self.dropped = 0
        return message


async def handle_watch(req: Request) -> Message:
    path = fields.optional_str(req.msg, "path", ".")
    recursive = fields.optional_bool(req.msg, "recursive", False)
    include_entry = fields.optional_bool(req.msg, "includeEntry", False)
    network_mounts = fields.optional_bool(req.msg, "allowNetworkMounts", True)
    root = resolve(path, req.settings.workdir)
    try:
        inotify = _Inotify()
    except OSError as exc:
        raise AgentError(TOO_LARGE, f"no inotify instance left in the sandbox: {exc}") from None
    watcher = Watcher(req, root, recursive, inotify, credit=req.settings.window)
    loop = asyncio.get_running_loop()
    adding: set[asyncio.Task[list[str]]] = set()

    async def described(batch: Message) -> Message:
        if include_entry:
            await req.files.run(with_entries, root, batch["events"])
        return batch

    def added(task: asyncio.Task[list[str]]) -> None:
        adding.discard(task)
        if not task.cancelled() and task.exception() is not None:
            watcher.dropped += 1  # a new directory could not be watched: say events are lost
            watcher.wake.set()

    def on_readable() -> None:
        for directory in watcher.readable():
            task = loop.create_task(req.files.run(watcher.add_tree, directory))
            adding.add(task)
            task.add_done_callback(added)

    try:
        try:
            if not network_mounts:
                await req.files.run(refuse_network_mount, root)
            await req.files.run(watcher.add_tree, "")
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise AgentError(NOT_A_DIRECTORY, f"not a directory: {path}") from None
            if exc.errno == errno.ENOSPC:
                raise AgentError(TOO_LARGE, "the sandbox's inotify watches are used up") from None
            raise from_os_error(exc, path) from exc
        req.subscriptions.watchers[req.id] = watcher
        loop.add_reader(inotify.fd, on_readable)
        await req.emit({"id": req.id, "type": "watchStarted", "path": path, "root": root})
        while watcher.ended is None:
            await watcher.wake.wait()
            watcher.wake.clear()
            while (watcher.queue or watcher.dropped) and watcher.credit > 0:
                watcher.credit -= 1
                await req.emit(await described(watcher.batch()))
        if watcher.queue or watcher.dropped:
            await req.emit(await described(watcher.batch()))
        return {"type": "watchEnded", "path": path, "reason": watcher.ended}
    finally:
        req.subscriptions.watchers.pop(req.id, None)
        loop.remove_reader(inotify.fd)
        for task in adding:
            task.cancel()
        inotify.close()
