"""Volumes: storage of your own that outlives sandboxes (`AsyncVolume`, and `Volume` for
blocking code). Mount one at create (`AsyncSandbox(volumes=[...])`), or reach its files
without a sandbox. Every write and read is checked against the SHA-256 the server reports
for what the volume holds; a difference raises `IntegrityError`."""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from ._config import resolve
from ._errors import ConnectError, InsienError, error_from_response
from ._files import Progress, Source, _counted
from ._session import REST_TIMEOUT, rest_request

T = TypeVar("T")
DIGEST_HEADER = "X-Insien-Sha256"


class IntegrityError(InsienError):
    """What the volume holds is not what was sent (or what arrived is not what it holds):
    the server's SHA-256 or size differs from the one computed here."""


@dataclass(frozen=True)
class VolumeMount:
    """Where a sandbox sees one of your volumes (`AsyncSandbox(volumes=[...])`)."""

    name: str
    path: str
    read_only: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "readOnly": self.read_only}


def mounts_body(volumes: Sequence[VolumeMount | dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A create's `volumes`, from VolumeMounts or the wire's own dicts."""
    return [v.to_wire() if isinstance(v, VolumeMount) else dict(v) for v in volumes or ()]


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    size_limit: int
    created_at: str
    bytes_used: int | None = None
    """Measured when asked (`info()`); None in a listing."""
    sandboxes: tuple[str, ...] = ()
    """Sandboxes that mount it (`info()` only)."""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> VolumeInfo:
        return cls(
            name=str(raw["name"]),
            size_limit=int(raw["sizeLimit"]),
            created_at=str(raw["createdAt"]),
            bytes_used=int(raw["bytesUsed"]) if "bytesUsed" in raw else None,
            sandboxes=tuple(raw.get("sandboxes", ())),
        )


@dataclass(frozen=True)
class VolumeEntry:
    name: str
    type: str
    """`file`, `dir`, `symlink` or `other`."""
    size: int
    mtime: float


@dataclass(frozen=True)
class Written:
    """What a write left in the volume, as the server measured it (and this SDK checked)."""

    path: str
    bytes: int
    sha256: str


class AsyncVolume:
    """One of your volumes, by name.

    volume = await AsyncVolume.create("data", size_limit="2g")
    await volume.upload("in/set.csv", "set.csv")
    async with AsyncSandbox(volumes=[VolumeMount("data", "/data")]) as sandbox: ...
    """

    def __init__(self, name: str, api_key: str | None = None, base_url: str | None = None):
        """The volume `name` (no call is made: use `create` to make one)."""
        self.name = name
        self._key, self.base_url = resolve(api_key, base_url)

    def _client(self, timeout: float | None = REST_TIMEOUT) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"X-API-Key": self._key}, timeout=timeout
        )

    async def _call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        async with self._client() as client:
            return await rest_request(client, self.base_url, method, url, body, params=params)

    @classmethod
    async def create(
        cls,
        name: str,
        size_limit: int | str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> AsyncVolume:
        """Make a volume; `size_limit` in bytes or as `512m`, `2g` (the server's default: 1g)."""
        volume = cls(name, api_key, base_url)
        body: dict[str, Any] = {"name": name}
        if size_limit is not None:
            body["sizeLimit"] = size_limit
        await volume._call("POST", "/volumes", body)
        return volume

    @staticmethod
    async def list(
        api_key: str | None = None, base_url: str | None = None
    ) -> builtins.list[VolumeInfo]:
        """Your volumes, oldest first."""
        key, url = resolve(api_key, base_url)
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": key}, timeout=REST_TIMEOUT
        ) as client:
            found = await rest_request(client, url, "GET", "/volumes")
        return [VolumeInfo.from_wire(raw) for raw in found["volumes"]]

    async def info(self) -> VolumeInfo:
        """Its limit, the bytes its files hold now, and the sandboxes that mount it."""
        return VolumeInfo.from_wire(await self._call("GET", f"/volumes/{self.name}"))

    async def delete(self, *, force: bool = False) -> None:
        """Delete it and its files; refused while a sandbox mounts it unless `force` (which
        destroys those sandboxes)."""
        await self._call("DELETE", f"/volumes/{self.name}", params={"force": str(force).lower()})

    def mount(self, path: str, *, read_only: bool = False) -> VolumeMount:
        """This volume at `path` of a sandbox to be created."""
        return VolumeMount(self.name, path, read_only)

    # -- files, without a sandbox -----------------------------------------------------------

    async def list_files(self, path: str = "/") -> builtins.list[VolumeEntry]:
        """A folder's entries (symlinks are listed, never followed)."""
        found = await self._call("GET", f"/volumes/{self.name}/entries", params={"path": path})
        return [
            VolumeEntry(str(e["name"]), str(e["type"]), int(e["size"]), float(e["mtime"]))
            for e in found["entries"]
        ]

    async def make_dir(self, path: str) -> None:
        await self._call("POST", f"/volumes/{self.name}/folders", params={"path": path})

    async def remove(self, path: str) -> None:
        """Remove a file, or a folder with everything in it."""
        await self._call("DELETE", f"/volumes/{self.name}/files", params={"path": path})

    async def write(self, path: str, data: bytes | str) -> Written:
        """Write a whole file (folders on the way are made)."""
        return await self.upload(path, data.encode() if isinstance(data, str) else data)

    async def upload(
        self, path: str, source: Source, *, on_progress: Progress | None = None
    ) -> Written:
        """Stream bytes, a local file (path or open binary file) or an async iterable into
        `path`. The answer's size and SHA-256 are checked against what was sent; bytes
        given whole also name their SHA-256 up front (`X-Insien-Sha256`), so a body changed
        on the way is refused by the server before anything is written."""
        digest = hashlib.sha256()
        sent = 0
        headers: dict[str, str] = {}
        if isinstance(source, bytes):
            headers[DIGEST_HEADER] = hashlib.sha256(source).hexdigest()

        async def hashed() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in _counted(source, on_progress):
                digest.update(chunk)
                sent += len(chunk)
                yield chunk

        try:
            async with self._client(timeout=None) as client:
                response = await client.put(
                    f"/volumes/{self.name}/files",
                    params={"path": path},
                    content=hashed(),
                    headers=headers,
                )
        except httpx.TransportError as exc:
            raise ConnectError(f"upload of {path} failed: {exc}") from exc
        if response.is_error:
            error = error_from_response(response)
            if headers and response.status_code == 400 and DIGEST_HEADER in error.message:
                # The server received other bytes than these: refused, nothing written.
                raise IntegrityError(f"{path}: {error.message}") from error
            raise error
        answer = response.json()
        written = Written(str(answer["path"]), int(answer["bytes"]), str(answer["sha256"]))
        if written.bytes != sent or written.sha256 != digest.hexdigest():
            raise IntegrityError(
                f"{path}: sent {sent} bytes with SHA-256 {digest.hexdigest()}, the volume "
                f"holds {written.bytes} with {written.sha256}"
            )
        return written

    async def read(self, path: str) -> bytes:
        """A whole file's bytes."""
        parts: builtins.list[bytes] = []

        async def keep(chunk: bytes) -> None:
            parts.append(chunk)

        await self._download(path, keep, None)
        return b"".join(parts)

    async def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        on_progress: Progress | None = None,
    ) -> None:
        """Stream a file into a local file; checked against the SHA-256 the server sends."""
        async with await anyio.open_file(destination, "wb") as out:

            async def write(chunk: bytes) -> None:
                await out.write(chunk)

            await self._download(path, write, on_progress)

    async def _download(
        self,
        path: str,
        sink: Callable[[bytes], Awaitable[None]],
        on_progress: Progress | None,
    ) -> None:
        digest = hashlib.sha256()
        try:
            async with (
                self._client(timeout=None) as client,
                client.stream("GET", f"/volumes/{self.name}/files", params={"path": path}) as got,
            ):
                if got.is_error:
                    await got.aread()
                    raise error_from_response(got)
                expected = got.headers.get(DIGEST_HEADER, "")
                async for chunk in _counted(got.aiter_bytes(), on_progress):
                    digest.update(chunk)
                    await sink(chunk)
        except httpx.TransportError as exc:
            raise ConnectError(f"download of {path} failed: {exc}") from exc
        if expected != digest.hexdigest():
            raise IntegrityError(
                f"{path}: received SHA-256 {digest.hexdigest()}, the volume holds "
                f"{expected or 'no digest'}"
            )


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from ._sync import _run_in_own_thread

    return _run_in_own_thread(fn)


class Volume:
    """The blocking twin of `AsyncVolume`: each call runs on a short-lived event loop."""

    def __init__(self, name: str, api_key: str | None = None, base_url: str | None = None):
        self._async = AsyncVolume(name, api_key, base_url)
        self.name = name
        self.base_url = self._async.base_url

    @classmethod
    def create(
        cls,
        name: str,
        size_limit: int | str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> Volume:
        _run(lambda: AsyncVolume.create(name, size_limit, api_key, base_url))
        return cls(name, api_key, base_url)

    @staticmethod
    def list(api_key: str | None = None, base_url: str | None = None) -> builtins.list[VolumeInfo]:
        return _run(lambda: AsyncVolume.list(api_key, base_url))

    def info(self) -> VolumeInfo:
        return _run(self._async.info)

    def delete(self, *, force: bool = False) -> None:
        _run(lambda: self._async.delete(force=force))

    def mount(self, path: str, *, read_only: bool = False) -> VolumeMount:
        return self._async.mount(path, read_only=read_only)

    def list_files(self, path: str = "/") -> builtins.list[VolumeEntry]:
        return _run(lambda: self._async.list_files(path))

    def make_dir(self, path: str) -> None:
        _run(lambda: self._async.make_dir(path))

    def remove(self, path: str) -> None:
        _run(lambda: self._async.remove(path))

    def write(self, path: str, data: bytes | str) -> Written:
        return _run(lambda: self._async.write(path, data))

    def upload(self, path: str, source: Source, *, on_progress: Progress | None = None) -> Written:
        return _run(lambda: self._async.upload(path, source, on_progress=on_progress))

    def read(self, path: str) -> bytes:
        return _run(lambda: self._async.read(path))

    def download(
        self,
        path: str,
        destination: str | os.PathLike[str],
        *,
        on_progress: Progress | None = None,
    ) -> None:
        _run(lambda: self._async.download(path, destination, on_progress=on_progress))
