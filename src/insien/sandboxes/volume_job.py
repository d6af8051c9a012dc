"""The program a volume job runs: one file operation on a tenant's volume, away from any
sandbox, in a throwaway container of the sandbox image with the volume at `/volume`.

Standard library only (it runs as `python -I -S -c <this file>`). A sandbox may have left
anything in the volume, symlinks to `/etc` included, and may still be changing it while this
runs, so no path is ever resolved by the kernel in one go: every one is walked a component
at a time from the volume's root with `O_NOFOLLOW`, and a symlink anywhere on the way is
refused (`SYMLINK`) instead of followed. What it writes lands in a temporary name in the
same folder and is renamed over the target, so a reader sees the old file or the new one.

It answers with one JSON line on stdout: the operation's result, or `{"error", "message"}`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pwd
import secrets
import stat
import sys
from collections.abc import Callable
from typing import Any

ROOT = "/volume"
INBOX = "/tmp/insien-in/data"
"""Where the server puts an upload (in the job container's own filesystem) before it starts."""
OUTBOX = "/tmp/insien-out/data"
"""Where a read leaves the file's bytes for the server to take after the job ends."""
MAX_ENTRIES = 10_000
CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
UPLOAD_PREFIX = ".insien-upload-"


class Refused(Exception):
    """The operation cannot be done; `code` is one of the protocol's error codes or SYMLINK,
    NO_SPACE."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parts(path: str) -> list[str]:
    """A path inside the volume as its components (`/a//b/.` is `a`, `b`); `..` is refused."""
    pieces = [piece for piece in path.split("/") if piece not in ("", ".")]
    if ".." in pieces:
        raise Refused("BAD_REQUEST", f"{path!r}: '..' is not allowed")
    if "\x00" in path:
        raise Refused("BAD_REQUEST", "a path must not contain a NUL byte")
    return pieces


def _refusal(exc: OSError, where: str) -> Refused:
    if exc.errno == errno.ENOENT:
        return Refused("NOT_FOUND", f"{where}: no such file or folder")
    if exc.errno == errno.ELOOP:
        return Refused("SYMLINK", f"{where}: is a symbolic link (never followed here)")
    if exc.errno == errno.ENOTDIR:
        return Refused("NOT_A_DIRECTORY", f"{where}: not a folder (or a symbolic link)")
    if exc.errno == errno.EISDIR:
        return Refused("IS_A_DIRECTORY", f"{where}: is a folder")
    if exc.errno == errno.EEXIST:
        return Refused("ALREADY_EXISTS", f"{where}: already exists")
    if exc.errno == errno.ENOTEMPTY:
        return Refused("NOT_EMPTY", f"{where}: not empty")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Refused("PERMISSION_DENIED", f"{where}: permission denied")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Refused("NO_SPACE", f"{where}: no space left")
    return Refused("INTERNAL", f"{where}: {exc.strerror}")


def _is_link(folder: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(root: int, pieces: list[str], *, create: bool = False) -> int:
    """A descriptor of the folder `pieces` below `root`, walked without following any symlink;
    missing folders are made when `create`."""
    fd = os.dup(root)
    walked = ""
    for piece in pieces:
        walked = f"{walked}/{piece}"
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(piece, 0o755, dir_fd=fd)
            following = os.open(piece, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            # O_DIRECTORY may answer ENOTDIR for a symlink before O_NOFOLLOW's ELOOP.
            if exc.errno == errno.ENOTDIR and _is_link(fd, piece):
                raise _refusal(OSError(errno.ELOOP, "symbolic link"), walked) from None
            raise _refusal(exc, walked) from None
        finally:
            os.close(fd)
        fd = following
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def usage(root: int) -> int:
    """Bytes the volume's files hold (their sizes; symlinks count their own length)."""
    total = 0
    for _, folders, files, fd in os.fwalk(".", dir_fd=root, follow_symlinks=False):
        for name in [*folders, *files]:
            # Removed while we looked: a sandbox may be using the volume.
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(name, dir_fd=fd, follow_symlinks=False).st_size
    return total


def list_folder(root: int, path: str) -> dict[str, Any]:
    fd = open_dir(root, parts(path))
    try:
        entries: list[dict[str, Any]] = []
        with os.scandir(fd) as found:
            for entry in found:
                if len(entries) >= MAX_ENTRIES:
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append(
                    {
                        "name": entry.name,
                        "type": _kind(info.st_mode),
                        "size": info.st_size,
                        "mtime": info.st_mtime,
                    }
                )
    finally:
        os.close(fd)
    entries.sort(key=lambda item: str(item["name"]))
    return {"entries": entries, "truncated": len(entries) >= MAX_ENTRIES}


def _copy(source: int, target: int) -> tuple[int, str]:
    """Copy one open file into another; the bytes copied and their SHA-256."""
    digest, size = hashlib.sha256(), 0
    while chunk := os.read(source, CHUNK):
        digest.update(chunk)
        size += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
    return size, digest.hexdigest()


def _split(path: str) -> tuple[list[str], str]:
    pieces = parts(path)
    if not pieces:
        raise Refused("IS_A_DIRECTORY", "the volume's root is a folder")
    return pieces[:-1], pieces[-1]


def read_file(root: int, path: str, outbox: str = OUTBOX) -> dict[str, Any]:
    folder, name = _split(path)
    fd = open_dir(root, folder)
    try:
        try:
            # O_NONBLOCK: opening a FIFO someone left here must not hang the job.
            source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            raise _refusal(exc, path) from None
    finally:
        os.close(fd)
    try:
        mode = os.fstat(source).st_mode
        if stat.S_ISDIR(mode):
            raise Refused("IS_A_DIRECTORY", f"{path}: is a folder")
        if not stat.S_ISREG(mode):
            raise Refused("BAD_REQUEST", f"{path}: not a regular file")
        os.set_blocking(source, True)
        os.makedirs(os.path.dirname(outbox), exist_ok=True)
        target = os.open(outbox, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            size, digest = _copy(source, target)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return {"size": size, "sha256": digest}


def write_file(
    root: int, path: str, limit: int, inbox: str = INBOX, expected: str = ""
) -> dict[str, Any]:
    """Put the inbox at `path` (folders made on the way) unless the volume would then hold
    more than `limit` bytes (NO_SPACE), or what was copied is not `expected` (its SHA-256, as
    the server received it: CORRUPT, and the old file stays)."""
    folder, name = _split(path)
    incoming = os.stat(inbox).st_size
    fd = open_dir(root, folder, create=True)
    try:
        try:
            before = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            replaced = 0
        except OSError as exc:
            raise _refusal(exc, path) from None
        else:
            if stat.S_ISDIR(before.st_mode):
                raise Refused("IS_A_DIRECTORY", f"{path}: is a folder")
            replaced = before.st_size
        used = usage(root)
        if used - replaced + incoming > limit:
            raise Refused(
                "NO_SPACE",
                f"the volume holds {used} of its {limit} bytes; this file would need "
                f"{incoming - replaced} more",
            )
        temporary = UPLOAD_PREFIX + secrets.token_hex(8)
        target = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=fd,
        )
        try:
            source = os.open(inbox, os.O_RDONLY)
            try:
                size, digest = _copy(source, target)
            finally:
                os.close(source)
            if expected and digest != expected:
                raise Refused(
                    "CORRUPT",
                    f"{path}: the volume received SHA-256 {digest}, the server sent "
                    f"{expected}; nothing was written",
                )
            os.fsync(target)
            os.close(target)
            target = -1
            # A rename replaces whatever has the name (a symlink too) and never follows it.
            os.replace(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            if target >= 0:
                os.close(target)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=fd)
            raise
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Refused(
                "NO_SPACE",
                f"{path}: the volume's disk is full (a file being replaced keeps its old "
                "copy until the new one is whole, so both need room for a moment)",
            ) from None
        raise _refusal(exc, path) from None
    finally:
        os.close(fd)
    return {"size": size, "sha256": digest}


def _remove_tree(parent: int, name: str) -> None:
    """Remove a folder and everything in it, never leaving `parent` through a symlink."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        with os.scandir(fd) as found:
            inside = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in found]
        for child, is_dir in inside:
            if is_dir:
                _remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def remove(root: int, path: str) -> dict[str, Any]:
    folder, name = _split(path)
    fd = open_dir(root, folder)
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            _remove_tree(fd, name)
        else:
            os.unlink(name, dir_fd=fd)
    except OSError as exc:
        raise _refusal(exc, path) from None
    finally:
        os.close(fd)
    return {"removed": True}


def make_folder(root: int, path: str) -> dict[str, Any]:
    os.close(open_dir(root, parts(path), create=True))
    return {"made": True}


def owner_ids(user: str) -> tuple[int, int]:
    """`uid[:gid]` or a name, as the image's passwd file says (a uid alone: its group, or
    the same number)."""
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    else:
        entry = pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    return uid, int(group) if group.isdigit() else gid


def prepare(root: int, user: str) -> dict[str, Any]:
    """A new volume's root, owned by the sandbox user (run as root, with CHOWN only)."""
    uid, gid = owner_ids(user)
    # A disk-backed volume is a fresh ext4 filesystem: its empty lost+found is root's, of no
    # use to the sandbox user, and e2fsck makes it again should it ever need one.
    with contextlib.suppress(FileNotFoundError):
        os.rmdir("lost+found", dir_fd=root)
    os.chmod(root, 0o755)  # first: once it is not root's, changing its mode needs FOWNER
    os.chown(root, uid, gid)
    return {"uid": uid, "gid": gid}


OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "usage": lambda root: {"bytes": usage(root)},
    "list": list_folder,
    "read": read_file,
    "write": lambda root, path, limit, expected="": write_file(
        root, path, int(limit), expected=expected
    ),
    "remove": remove,
    "mkdir": make_folder,
    "prepare": prepare,
}


def main(argv: list[str]) -> int:
    operation, *arguments = argv
    root = os.open(ROOT, DIR_FLAGS)
    try:
        answer = OPERATIONS[operation](root, *arguments)
    except Refused as refused:
        answer = {"error": refused.code, "message": refused.message}
    finally:
        os.close(root)
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
