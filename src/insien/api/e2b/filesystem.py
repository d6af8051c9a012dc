"""envd's `filesystem.Filesystem` service, translated to Insien's file messages (`stat`,
`list`, `mkdir`, `rename`, `remove`): the agent's file layer, acting as the sandbox user.
Paths are resolved as envd resolves them (`sandbox_path`), and entries described as envd 0.6.2+
describes them (`entry_info`, with the file's `user.e2b.*` metadata)."""

from __future__ import annotations

import posixpath
import stat
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...protocol import Message
from .calls import EnvdCall, Method
from .connect import Code, ConnectError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


HOME = "/home/user"
"""The sandbox user's home (and the agent's working directory): envd's base for relative paths."""


def sandbox_path(path: str) -> str | None:
    """The absolute path envd makes of a request's path (its `ExpandAndResolve`): `~` and
    `~/…` are in the user's home, so is a relative path (and "" is the home itself); an
    absolute path is taken as given. None for `~name`, which envd refuses."""
    if path.startswith("~"):
        if len(path) > 1 and path[1] != "/":
            return None
        path = path[1:].lstrip("/")
    if posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(HOME, path))


class PathRequest(_Model):
    path: str = ""

    def resolved(self) -> str:
        found = sandbox_path(self.path)
        if found is None:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"cannot expand user-specific home dir: {self.path}"
            )
        return found


class ListDirRequest(PathRequest):
    depth: int = Field(0, ge=0, le=32)


class MoveRequest(_Model):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)

    def resolved(self) -> tuple[str, str]:
        return PathRequest(path=self.source).resolved(), PathRequest(
            path=self.destination
        ).resolved()


_FILE_TYPES = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
_GO_MODE_LETTERS = (
    ("dir", "d"),
    ("symlink", "L"),
    ("block", "D"),
    ("char", "D"),
    ("fifo", "p"),
    ("socket", "S"),
)


def permissions(kind: str, mode: int) -> str:
    """The mode as envd writes it (Go's `FileMode.String`): type letters, then setuid `u`,
    setgid `g`, character device `c`, sticky `t`, then `rwxrwxrwx` (a symlink is `Lrwxrwxrwx`,
    `/tmp` is `dtrwxrwxrwx`)."""
    letters = "".join(letter for name, letter in _GO_MODE_LETTERS if name == kind)
    letters += "u" if mode & stat.S_ISUID else ""
    letters += "g" if mode & stat.S_ISGID else ""
    letters += "c" if kind == "char" else ""
    letters += "t" if mode & stat.S_ISVTX else ""
    bits = "".join(char if mode & (1 << (8 - i)) else "-" for i, char in enumerate("rwxrwxrwx"))
    return (letters or "-") + bits


def timestamp(seconds: float) -> str:
    """A protobuf JSON Timestamp (RFC 3339, UTC)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def entry_info(entry: Message) -> dict[str, Any]:
    """An Insien file entry as envd's EntryInfo (int64 `size` is a string in protobuf JSON;
    `metadata`, the file's `user.e2b.*` attributes, only when it has some). A symlink is
    described by where it leads, as envd does: `type` and `mode` are its target's,
    `symlinkTarget` the absolute path it resolves to (the link's own path, type unspecified
    and mode 0 when it leads nowhere), `permissions` the link's own (`L…`); SDKs tell it
    from a file by `symlinkTarget`."""
    kind = str(entry.get("type", "other"))
    mode = int(entry.get("mode", 0))
    info: dict[str, Any] = {
        "name": entry.get("name", ""),
        "type": _FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        "path": entry.get("path", ""),
        "size": str(int(entry.get("size", 0))),
        "mode": mode & 0o777,
        "permissions": permissions(kind, mode),
        "owner": str(entry.get("owner", "")),
        "group": str(entry.get("group", "")),
        "modifiedTime": timestamp(float(entry.get("mtime", 0))),
    }
    if kind == "symlink":
        resolved = entry.get("resolved")
        if isinstance(resolved, dict):
            info["type"] = _FILE_TYPES.get(str(resolved.get("type")), "FILE_TYPE_UNSPECIFIED")
            info["mode"] = int(resolved.get("mode", 0)) & 0o777
            info["symlinkTarget"] = str(resolved.get("path", ""))
        else:
            info["type"] = "FILE_TYPE_UNSPECIFIED"
            info["mode"] = 0
            info["symlinkTarget"] = info["path"]
    found = entry.get("metadata")
    if isinstance(found, dict) and found:
        info["metadata"] = {str(key): str(value) for key, value in found.items()}
    return info


async def _entry(call: EnvdCall, path: str) -> dict[str, Any]:
    reply = await call.agent({"type": "stat", "path": path})
    return entry_info(reply["entry"])


async def stat_path(call: EnvdCall) -> dict[str, Any]:
    return {"entry": await _entry(call, call.parse(PathRequest).resolved())}


async def make_dir(call: EnvdCall) -> dict[str, Any]:
    path = call.parse(PathRequest).resolved()
    found = await call.agent({"type": "exists", "path": path})
    if found.get("exists"):
        raise ConnectError(Code.ALREADY_EXISTS, f"directory {path} already exists")
    await call.agent({"type": "mkdir", "path": path, "parents": True})
    return {"entry": await _entry(call, path)}


async def move(call: EnvdCall) -> dict[str, Any]:
    source, destination = call.parse(MoveRequest).resolved()
    await call.agent({"type": "rename", "path": source, "newPath": destination})
    return {"entry": await _entry(call, destination)}


async def remove(call: EnvdCall) -> dict[str, Any]:
    """envd removes with `os.RemoveAll`: what is not there is removed already (success)."""
    path = call.parse(PathRequest).resolved()
    try:
        await call.agent({"type": "remove", "path": path, "recursive": True})
    except ConnectError as exc:
        if exc.code is not Code.NOT_FOUND:
            raise
    return {}


async def list_dir(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(ListDirRequest)
    path = request.resolved()
    reply = await call.agent({"type": "list", "path": path, "depth": request.depth or 1})
    return {"entries": [entry_info(entry) for entry in reply.get("entries", [])]}


METHODS: dict[str, Method] = {
    "/filesystem.Filesystem/Stat": Method(unary=stat_path),
    "/filesystem.Filesystem/MakeDir": Method(unary=make_dir),
    "/filesystem.Filesystem/Move": Method(unary=move),
    "/filesystem.Filesystem/Remove": Method(unary=remove),
    "/filesystem.Filesystem/ListDir": Method(unary=list_dir),
}
