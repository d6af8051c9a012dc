"""The file API: `write`, `read`, `list`, `stat`, `exists`, `mkdir`, `remove`, `rename`.

Nothing here ever blocks on a special file: opens use O_NONBLOCK and refuse anything that is
not a regular file, `list` and `stat` never open what they describe for reading, and reads are
capped. The worker threads belong to the agent's process, so its `/proc/<pid>` (and
`/proc/self`, `/proc/thread-self`) would be open to them: every path is opened first and the
open file checked with `_guard`, which refuses anything of the agent's own.
Blocking filesystem calls run in worker threads so a slow disk never stalls the agent, and those
threads act as the sandbox user (see `identity`), so permissions and planted symlinks are judged
exactly as they would be for user code.

Long because it holds one handler per file request; the checks they share (`_guard`,
`_open_checked`) are at the top.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import os
import shutil
import stat
from typing import Any

from . import accounts, fields, frames, metadata
from .context import Request
from .errors import (
    BAD_ENCODING,
    BAD_REQUEST,
    IS_A_DIRECTORY,
    PERMISSION_DENIED,
    TOO_LARGE,
    AgentError,
    from_os_error,
)

Message = dict[str, Any]
MAX_LIST_ENTRIES = 10_000


def _guard(fd: int, path: str) -> None:
    """Refuse an open file that is part of the agent's own /proc entry (whatever path, link
    or `self` alias led there): nothing of the agent is readable or writable through files."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    own = f"/proc/{os.getpid()}"
    if target == own or target.startswith(own + "/"):
        raise AgentError(PERMISSION_DENIED, f"permission denied: {path}")


def _open_checked(path: str, flags: int, mode: int = 0o644) -> int:
    fd = os.open(path, flags, mode)
    try:
        _guard(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat(path: str) -> os.stat_result:
    """lstat, through an O_PATH descriptor that `_guard` has checked."""
    fd = _open_checked(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        return os.stat(fd)
    finally:
        os.close(fd)


def _lexists(path: str) -> bool:
    try:
        _lstat(path)
    except (OSError, AgentError):
        return False
    return True


def resolve(path: str, workdir: str) -> str:
    """Relative paths are relative to the sandbox's working directory, as in the original
    Node.js design."""
    return os.path.normpath(os.path.join(workdir, path))


def _decode_content(msg: Message) -> bytes:
    content = fields.required_str(msg, "content", allow_empty=True)
    if fields.encoding(msg) == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AgentError(BAD_REQUEST, "field 'content' is not valid base64") from exc
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped into the JSON string
        raise AgentError(BAD_ENCODING, "field 'content' is not valid Unicode") from exc


def _write(
    path: str,
    data: bytes,
    *,
    append: bool,
    mode: int | None,
    offset: int | None = None,
    tags: dict[str, str] | None = None,
) -> Message:
    """Write the data; with `tags`, then make them the file's metadata (see `metadata`).
    Returns what the answer adds: the metadata read back, or that the filesystem keeps none."""
    continuing = bool(offset)  # a positional write continues a file; it never makes one
    if not continuing:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # (A late write of a cancelled upload must not bring back the part file it removed.)
    flags = os.O_WRONLY | os.O_NONBLOCK | (0 if continuing else os.O_CREAT)
    if append:
        flags |= os.O_APPEND
    elif offset is None:
        flags |= os.O_TRUNC
    fd = _open_checked(path, flags, 0o644 if mode is None else mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AgentError(BAD_REQUEST, f"not a regular file: {path}")
        if mode is not None:
            os.fchmod(fd, mode)
        if not continuing:
            # envd chowns what it writes to the user: watchers see create, chmod, write for a
            # new file (E2B's SDKs count them). Owned by the writer already, this changes
            # nothing but the event.
            own = os.fstat(fd)
            os.fchown(fd, own.st_uid, own.st_gid)
        os.set_blocking(fd, True)
        view = memoryview(data)
        position = offset
        while view:
            if position is None:
                written = os.write(fd, view)
            else:
                written = os.pwrite(fd, view, position)
                position += written
            view = view[written:]
        if tags is None:
            return {}
        if not metadata.replace(fd, tags):
            return {"metadata": {}, "metadataUnsupported": True}
        return {"metadata": metadata.read(fd) or {}}
    finally:
        os.close(fd)


def _read(path: str, offset: int, length: int | None, limit: int) -> tuple[bytes, int]:
    fd = _open_checked(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise AgentError(IS_A_DIRECTORY, f"is a directory: {path}")
        if not stat.S_ISREG(info.st_mode):
            raise AgentError(BAD_REQUEST, f"not a regular file: {path}")
        wanted = length if length is not None else max(info.st_size - offset, 0)
        if wanted > limit:
            raise AgentError(
                TOO_LARGE,
                f"{path}: {wanted} bytes asked for, the limit is {limit}; "
                "read it in parts with 'offset' and 'length', or download it",
            )
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        position = offset
        cap = length if length is not None else limit + 1
        while size < cap and (chunk := os.pread(fd, min(1024 * 1024, cap - size), position)):
            chunks.append(chunk)
            size += len(chunk)
            position += len(chunk)
        if length is None and size > limit:  # the file grew while we read it
            raise AgentError(TOO_LARGE, f"{path} exceeds the {limit} byte read limit")
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    """The account name of a uid, or the number when the image has no such account."""
    found = accounts.user_by_uid(uid)  # not NSS: see accounts
    return found.name if found is not None else str(uid)


@functools.lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    return accounts.group_name(gid) or str(gid)


def _entry(
    path: str,
    name: str,
    info: os.stat_result,
    link: str | None = None,
    resolved: Message | None = None,
) -> Message:
    """An entry as the protocol describes it, with its metadata (a symlink's is its
    target's, as envd reads it) when it has any. Runs in a file worker, as the user."""
    entry: Message = {
        "name": name,
        "path": path,
        "type": _TYPES.get(stat.S_IFMT(info.st_mode), "other"),
        "size": info.st_size,
        "mode": stat.S_IMODE(info.st_mode),
        "mtime": info.st_mtime,
        "owner": _user_name(info.st_uid),
        "group": _group_name(info.st_gid),
    }
    if stat.S_ISLNK(info.st_mode):
        entry["target"] = link
        if resolved is not None:
            entry["resolved"] = resolved
    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode) or resolved is not None:
        # (Only files and folders can hold user attributes; a dangling link has none.)
        found = metadata.read(path)
        if found:
            entry["metadata"] = found
    return entry


def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _resolve(name: str, dir_fd: int) -> Message | None:
    """Where a symlink leads, followed to the end: the absolute path and what is there (as
    envd reports a link), or None when it leads nowhere the user can reach. The target is
    reached through an O_PATH descriptor that `_guard` checks, so a link into the agent's
    own /proc entry leads nowhere either."""
    try:
        fd = os.open(name, os.O_PATH, dir_fd=dir_fd)  # follows the whole chain; opens nothing
    except OSError:
        return None
    try:
        _guard(fd, name)
        info = os.stat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
    except (OSError, AgentError):
        return None
    finally:
        os.close(fd)
    kind = _TYPES.get(stat.S_IFMT(info.st_mode), "other")
    return {"path": path, "type": kind, "mode": stat.S_IMODE(info.st_mode)}


def _list(root: str, depth: int) -> tuple[list[Message], bool]:
    """Depth-first pre-order, names sorted, as envd's `filepath.WalkDir`: each directory is
    followed at once by what is under it (`a`, `a/b`, `a/b/c`, then `a`'s next entry), so a
    deep listing reads as a tree and a cut one is the start of it. A symlinked root is
    followed; symlinks below are described, not entered."""
    entries: list[Message] = []
    # One frame per open level: the folder, its open descriptor (each folder is opened and
    # checked once, its entries read relative to it) and its names not yet visited.
    stack: list[tuple[str, int, list[str]]] = []

    def enter(folder: str, flags: int) -> None:
        fd = _open_checked(folder, flags | os.O_RDONLY | os.O_NONBLOCK | os.O_DIRECTORY)
        try:
            names = sorted(os.listdir(fd), reverse=True)  # popped from the end: in order
        except BaseException:
            os.close(fd)
            raise
        stack.append((folder, fd, names))

    try:
        enter(root, 0)
        while stack:
            folder, fd, names = stack[-1]
            if not names:
                os.close(stack.pop()[1])
                continue
            name = names.pop()
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if len(entries) >= MAX_LIST_ENTRIES:
                return entries, True
            link = resolved = None
            if stat.S_ISLNK(info.st_mode):
                link, resolved = _readlink(name, fd), _resolve(name, fd)
            path = os.path.join(folder, name)
            entries.append(_entry(path, name, info, link, resolved))
            if stat.S_ISDIR(info.st_mode) and len(stack) < depth:
                with contextlib.suppress(OSError, AgentError):  # an unreadable one is skipped
                    enter(path, os.O_NOFOLLOW)
        return entries, False
    finally:
        for _folder, fd, _names in stack:
            os.close(fd)


def _remove(path: str, recursive: bool) -> None:
    info = _lstat(path)
    if stat.S_ISDIR(info.st_mode):
        if recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.unlink(path)


async def _fs(req: Request, path: str, fn: Any, *args: Any) -> Any:
    try:
        return await req.files.run(fn, *args)
    except OSError as exc:
        raise from_os_error(exc, path) from exc


async def handle_write(req: Request) -> Message:
    msg = req.msg
    path = fields.required_str(msg, "path")
    data = req.payload if req.payload is not None else _decode_content(msg)
    append = fields.optional_bool(msg, "append", False)
    offset = fields.optional_int(msg, "offset", None)
    if append and offset is not None:
        raise AgentError(BAD_REQUEST, "'append' and 'offset' cannot be combined")
    mode = fields.file_mode(msg)
    tags = metadata.validated(msg.get("metadata"))
    full = resolve(path, req.settings.workdir)
    extra = await _fs(
        req, path, lambda: _write(full, data, append=append, mode=mode, offset=offset, tags=tags)
    )
    return {"type": "writeResponse", "success": True, "path": path, **extra}


async def _size_hint(req: Request, full: str, offset: int) -> int:
    """How much a read will likely return; errors surface in the read itself."""
    try:
        size = (await req.files.run(os.stat, full)).st_size
    except OSError:
        return 1
    return max(size - offset, 1)


async def handle_read(req: Request) -> Message:
    msg = req.msg
    path = fields.required_str(msg, "path")
    encoding = fields.encoding(msg)
    offset = fields.optional_int(msg, "offset", 0)
    length = fields.optional_int(msg, "length", None)
    assert offset is not None
    full = resolve(path, req.settings.workdir)
    # Hold room for the content until the answer is written: many large reads at once wait
    # for each other instead of holding their copies (bytes, base64, line) all together.
    expected = length if length is not None else await _size_hint(req, full, offset)
    taken = await req.reads.acquire(min(expected, req.settings.max_read))
    req.after_answer.append(lambda: req.reads.release(taken))
    data, size = await _fs(req, path, _read, full, offset, length, req.settings.max_read)
    if req.channel is not None:
        # Raw, as frames on the request's channel; the answer says how many bytes they held.
        await req.outbox.send_frame(req.id, req.channel, frames.DATA, data)
        response: Message = {"type": "readResponse", "path": path, "bytes": len(data)}
        response.update(offset=offset, size=size, eof=offset + len(data) >= size)
        return response
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AgentError(
                BAD_ENCODING, f"{path} is not valid UTF-8; read it with encoding 'base64'"
            ) from exc
    response = {"type": "readResponse", "content": content, "path": path}
    if encoding != "utf-8":
        response["encoding"] = encoding
    if offset or length is not None:
        response.update(offset=offset, size=size, eof=offset + len(data) >= size)
    return response


async def handle_list(req: Request) -> Message:
    path = fields.optional_str(req.msg, "path", ".")
    depth = fields.optional_int(req.msg, "depth", 1, minimum=1)
    assert depth is not None
    full = resolve(path, req.settings.workdir)
    entries, truncated = await _fs(req, path, _list, full, depth)
    return {"type": "listResponse", "path": path, "entries": entries, "truncated": truncated}


def describe(full: str) -> Message:
    """The entry at an absolute path (a symlink described, not followed). In a file worker."""
    info = _lstat(full)
    link = resolved = None
    if stat.S_ISLNK(info.st_mode):
        parent = _open_checked(os.path.dirname(full) or "/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            name = os.path.basename(full)
            link, resolved = _readlink(name, parent), _resolve(name, parent)
        finally:
            os.close(parent)
    return _entry(full, os.path.basename(full), info, link, resolved)


async def handle_stat(req: Request) -> Message:
    path = fields.required_str(req.msg, "path")
    full = resolve(path, req.settings.workdir)

    entry = await _fs(req, path, describe, full)
    return {"type": "statResponse", "path": path, "entry": entry}


async def handle_exists(req: Request) -> Message:
    path = fields.required_str(req.msg, "path")
    full = resolve(path, req.settings.workdir)
    exists = await req.files.run(_lexists, full)
    return {"type": "existsResponse", "path": path, "exists": exists}


async def handle_mkdir(req: Request) -> Message:
    path = fields.required_str(req.msg, "path")
    parents = fields.optional_bool(req.msg, "parents", True)
    mode = fields.file_mode(req.msg)
    full = resolve(path, req.settings.workdir)

    def make() -> None:
        if parents:
            os.makedirs(full, mode=0o755 if mode is None else mode, exist_ok=True)
            if not os.path.isdir(full):
                raise FileExistsError(full)
        else:
            os.mkdir(full, 0o755 if mode is None else mode)

    await _fs(req, path, make)
    return {"type": "mkdirResponse", "success": True, "path": path}


async def handle_remove(req: Request) -> Message:
    path = fields.required_str(req.msg, "path")
    recursive = fields.optional_bool(req.msg, "recursive", False)
    full = resolve(path, req.settings.workdir)
    if full == "/":
        raise AgentError(BAD_REQUEST, "refusing to remove /")
    await _fs(req, path, _remove, full, recursive)
    return {"type": "removeResponse", "success": True, "path": path}


async def handle_rename(req: Request) -> Message:
    path = fields.required_str(req.msg, "path")
    new_path = fields.required_str(req.msg, "newPath")
    full = resolve(path, req.settings.workdir)
    full_new = resolve(new_path, req.settings.workdir)

    def move() -> None:
        os.makedirs(os.path.dirname(full_new) or ".", exist_ok=True)
        os.replace(full, full_new)

    await _fs(req, path, move)
    return {"type": "renameResponse", "success": True, "path": path, "newPath": new_path}
