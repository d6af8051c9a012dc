"""`write` and `read`: whole-file transfer inside one message, text or base64."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import stat
from typing import Any

from . import fields
from .errors import BAD_ENCODING, BAD_REQUEST, IS_A_DIRECTORY, TOO_LARGE, AgentError, from_os_error
from .settings import AgentSettings

Message = dict[str, Any]


def resolve(path: str, settings: AgentSettings) -> str:
    """Relative paths are relative to the sandbox's working directory, as in the seed."""
    return os.path.join(settings.workdir, path)


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


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # O_NONBLOCK: opening a FIFO someone planted must fail fast instead of hanging the request.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AgentError(BAD_REQUEST, f"not a regular file: {path}")
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _read(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise AgentError(IS_A_DIRECTORY, f"is a directory: {path}")
        if not stat.S_ISREG(info.st_mode):
            raise AgentError(BAD_REQUEST, f"not a regular file: {path}")
        if info.st_size > limit:
            raise AgentError(TOO_LARGE, f"{path} is {info.st_size} bytes; the limit is {limit}")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1024 * 1024):
            size += len(chunk)
            if size > limit:  # the file grew while we read it
                raise AgentError(TOO_LARGE, f"{path} exceeds the {limit} byte read limit")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


async def handle_write(msg: Message, settings: AgentSettings) -> Message:
    path = fields.required_str(msg, "path")
    data = _decode_content(msg)
    try:
        await asyncio.to_thread(_write, resolve(path, settings), data)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    return {"type": "writeResponse", "success": True, "path": path}


async def handle_read(msg: Message, settings: AgentSettings) -> Message:
    path = fields.required_str(msg, "path")
    encoding = fields.encoding(msg)
    try:
        data = await asyncio.to_thread(_read, resolve(path, settings), settings.max_read)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AgentError(
                BAD_ENCODING, f"{path} is not valid UTF-8; read it with encoding 'base64'"
            ) from exc
    response: Message = {"type": "readResponse", "content": content, "path": path}
    if encoding != "utf-8":
        response["encoding"] = encoding
    return response
