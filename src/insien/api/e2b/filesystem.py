"""envd's `filesystem.Filesystem` service, translated to Insien's file messages (`stat`,
`list`, `mkdir`, `rename`, `remove`): the agent's file layer, acting as the sandbox user."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...protocol import Message
from .calls import EnvdCall, Method
from .connect import Code, ConnectError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PathRequest(_Model):
    path: str = Field(min_length=1)


class ListDirRequest(PathRequest):
    depth: int = Field(0, ge=0, le=32)


class MoveRequest(_Model):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


_FILE_TYPES = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
_TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
}


def timestamp(seconds: float) -> str:
    """A protobuf JSON Timestamp (RFC 3339, UTC)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def entry_info(entry: Message) -> dict[str, Any]:
    """An Insien file entry as envd's EntryInfo (int64 `size` is a string in protobuf JSON)."""
    kind = str(entry.get("type", "other"))
    mode = int(entry.get("mode", 0))
    info: dict[str, Any] = {
        "name": entry.get("name", ""),
        "type": _FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        "path": entry.get("path", ""),
        "size": str(int(entry.get("size", 0))),
        "mode": mode,
        "permissions": stat.filemode(_TYPE_BITS.get(kind, 0) | mode),
        "owner": str(entry.get("owner", "")),
        "group": str(entry.get("group", "")),
        "modifiedTime": timestamp(float(entry.get("mtime", 0))),
    }
    if kind == "symlink":
        info["isSymlink"] = True
        info["symlinkTarget"] = entry.get("target") or ""
    return info


async def _entry(call: EnvdCall, path: str) -> dict[str, Any]:
    reply = await call.agent({"type": "stat", "path": path})
    return entry_info(reply["entry"])


async def stat_path(call: EnvdCall) -> dict[str, Any]:
    return {"entry": await _entry(call, call.parse(PathRequest).path)}


async def make_dir(call: EnvdCall) -> dict[str, Any]:
    path = call.parse(PathRequest).path
    found = await call.agent({"type": "exists", "path": path})
    if found.get("exists"):
        raise ConnectError(Code.ALREADY_EXISTS, f"directory {path} already exists")
    await call.agent({"type": "mkdir", "path": path, "parents": True})
    return {"entry": await _entry(call, path)}


async def move(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(MoveRequest)
    await call.agent({"type": "rename", "path": request.source, "newPath": request.destination})
    return {"entry": await _entry(call, request.destination)}


async def remove(call: EnvdCall) -> dict[str, Any]:
    path = call.parse(PathRequest).path
    await call.agent({"type": "stat", "path": path})  # a missing path is NOT_FOUND, as in envd
    await call.agent({"type": "remove", "path": path, "recursive": True})
    return {}


async def list_dir(call: EnvdCall) -> dict[str, Any]:
    request = call.parse(ListDirRequest)
    reply = await call.agent({"type": "list", "path": request.path, "depth": request.depth or 1})
    return {"entries": [entry_info(entry) for entry in reply.get("entries", [])]}


METHODS: dict[str, Method] = {
    "/filesystem.Filesystem/Stat": Method(unary=stat_path),
    "/filesystem.Filesystem/MakeDir": Method(unary=make_dir),
    "/filesystem.Filesystem/Move": Method(unary=move),
    "/filesystem.Filesystem/Remove": Method(unary=remove),
    "/filesystem.Filesystem/ListDir": Method(unary=list_dir),
}
