"""`sandbox.files`: the sandbox's filesystem, over RPC for small things and REST for big ones."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, overload

import anyio
import httpx

from ._errors import ConnectError, error_from_response
from ._rpc import Message
from ._types import EntryInfo
from ._watch import WatchHandle

if TYPE_CHECKING:
    from ._session import Session

UPLOAD_CHUNK = 1024 * 1024
Source = bytes | str | os.PathLike[str] | BinaryIO | AsyncIterable[bytes]
Progress = Callable[[int], object]
"""Called with the bytes moved so far (a progress bar's `update`, say)."""


class Files:
    """Read, write and manage files. Relative paths start in the sandbox's home folder."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def watch(self, path: str = ".", *, recursive: bool = False) -> WatchHandle:
        """Start watching a directory; returns once it is watched, so every change made after
        this call is seen. Iterate the handle for its events; `stop()` ends it."""
        handle = WatchHandle(self._session, {"type": "watch", "path": path, "recursive": recursive})
        await self._session.tasks().start(handle._follow)
        return handle

    async def _call(self, message: Message) -> Message:
        return await (await self._session.connection()).call(message)

    async def write(
        self, path: str, data: str | bytes, *, mode: int | None = None, append: bool = False
    ) -> None:
        """Write a file in one message (parents are made). For big files use `upload`."""
        message: Message = {"type": "write", "path": path, "append": append}
        if isinstance(data, bytes):
            message.update(content=base64.b64encode(data).decode(), encoding="base64")
        else:
            message["content"] = data
        if mode is not None:
            message["mode"] = mode
        await self._call(message)

    @overload
    async def read(
        self,
        path: str,
        *,
        format: Literal["text"] = ...,
        offset: int = ...,
        length: int | None = ...,
    ) -> str: ...

    @overload
    async def read(
        self, path: str, *, format: Literal["bytes"], offset: int = ..., length: int | None = ...
    ) -> bytes: ...

    async def read(
        self,
        path: str,
        *,
        format: Literal["text", "bytes"] = "text",
        offset: int = 0,
        length: int | None = None,
    ) -> str | bytes:
        """A file's content as text (UTF-8) or bytes, optionally a slice of it."""
        message: Message = {"type": "read", "path": path}
        if format == "bytes":
            message["encoding"] = "base64"
        if offset:
            message["offset"] = offset
        if length is not None:
            message["length"] = length
        reply = await self._call(message)
        if format == "bytes":
            return base64.b64decode(reply["content"])
        return str(reply["content"])

    async def list(self, path: str = ".", *, depth: int = 1) -> list[EntryInfo]:
        reply = await self._call({"type": "list", "path": path, "depth": depth})
        return [EntryInfo.from_wire(entry) for entry in reply["entries"]]

    async def stat(self, path: str) -> EntryInfo:
        reply = await self._call({"type": "stat", "path": path})
        return EntryInfo.from_wire(reply["entry"])

    async def exists(self, path: str) -> bool:
        return bool((await self._call({"type": "exists", "path": path}))["exists"])

    async def mkdir(self, path: str, *, parents: bool = True) -> None:
        await self._call({"type": "mkdir", "path": path, "parents": parents})

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call({"type": "remove", "path": path, "recursive": recursive})

    async def rename(self, path: str, new_path: str) -> None:
        await self._call({"type": "rename", "path": path, "newPath": new_path})

    async def upload(
        self, path: str, source: Source, *, on_progress: Progress | None = None
    ) -> int:
        """Stream bytes, a local file (path or open binary file) or an async iterable into
        `path`, without holding it in memory. Returns the number of bytes written.
        `on_progress(n)` is called with the bytes sent so far, after each chunk."""
        sandbox_id = await self._session.create()
        response = await self._send(
            "PUT", f"/sandbox/{sandbox_id}/files", path, content=_counted(source, on_progress)
        )
        return int(response.json()["bytes"])

    @overload
    async def download(
        self, path: str, destination: None = None, *, on_progress: Progress | None = None
    ) -> bytes: ...

    @overload
    async def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        on_progress: Progress | None = None,
    ) -> None: ...

    async def download(
        self,
        path: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        on_progress: Progress | None = None,
    ) -> bytes | None:
        """A file's bytes, or streamed into a local file when `destination` is given.
        `on_progress(n)` is called with the bytes received so far, after each chunk."""
        sandbox_id = await self._session.create()
        client = self._session.client()
        try:
            async with client.stream(
                "GET", f"/sandbox/{sandbox_id}/files", params={"path": path}
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                chunks = _counted(response.aiter_bytes(), on_progress)
                if destination is None:
                    return b"".join([chunk async for chunk in chunks])
                async with await anyio.open_file(destination, "wb") as out:
                    async for chunk in chunks:
                        await out.write(chunk)
                return None
        except httpx.TransportError as exc:
            raise ConnectError(f"download of {path} failed: {exc}") from exc

    async def _send(self, method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._session.client().request(
                method, url, params={"path": path}, **kwargs
            )
        except httpx.TransportError as exc:
            raise ConnectError(f"transfer of {path} failed: {exc}") from exc
        if response.is_error:
            raise error_from_response(response)
        return response


async def _counted(source: Source, on_progress: Progress | None) -> AsyncIterator[bytes]:
    done = 0
    async for chunk in _chunks(source):
        yield chunk
        done += len(chunk)
        if on_progress is not None:
            on_progress(done)


async def _chunks(source: Source) -> AsyncIterator[bytes]:
    if isinstance(source, bytes):
        for start in range(0, len(source), UPLOAD_CHUNK):
            yield source[start : start + UPLOAD_CHUNK]
    elif isinstance(source, (str, os.PathLike)):
        async with await anyio.open_file(source, "rb") as local:
            while chunk := await local.read(UPLOAD_CHUNK):
                yield chunk
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    else:
        while chunk := await anyio.to_thread.run_sync(source.read, UPLOAD_CHUNK):
            yield chunk
