"""envd's plain-HTTP `/files`: `GET` streams one file out, `POST` writes one file
(`application/octet-stream`, gzip allowed) or several (`multipart/form-data`, each part's
filename is its path). Bytes go through `link.transfer` as binary frames. Paths are envd's
(`sandbox_path`: relative to the user's home, answered absolute), and an upload writes the file
in place as envd does, so a watcher sees that file created and written, never a temporary name
(a cut upload leaves what arrived, as with envd). As envd 0.6.2+ does, each `X-Metadata-<key>`
header becomes the written file's `user.e2b.<key>` attribute: every upload replaces the file's
metadata (none sent clears it), and the answer holds what the file kept, read back, so on a
filesystem without user attributes it holds none rather than claiming what was not stored."""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any

from pydantic import TypeAdapter, ValidationError
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ...link import AgentLink
from ...link.transfer import TransferError, open_download, upload
from ...protocol import ErrorCode, Metadata, describe
from ...sandboxes.access import Admission
from ..exchange import ClientGone, Exchange
from .filesystem import sandbox_path

log = logging.getLogger(__name__)

INFLATE_STEP = 1024 * 1024
METADATA_HEADER = b"x-metadata-"
_METADATA = TypeAdapter(Metadata)


class FilesError(Exception):
    """An answer of the `/files` route other than success: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_STATUS: dict[str, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.IS_A_DIRECTORY: 400,
    ErrorCode.NOT_A_DIRECTORY: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BAD_ENCODING: 400,
    ErrorCode.CANCELLED: 400,
    ErrorCode.AGENT_GONE: 502,
}


def files_error(exc: TransferError) -> FilesError:
    return FilesError(_STATUS.get(exc.code, 500), exc.message)


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _path(asked: str | None) -> str:
    """The absolute path envd makes of a `path` parameter or a part's filename."""
    if not asked:
        raise FilesError(400, "query parameter 'path' is required")
    path = sandbox_path(asked)
    if path is None:
        raise FilesError(400, f"cannot expand user-specific home dir: {asked}")
    return path


def upload_metadata(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """envd's `extractMetadataHeaders` and `ValidateMetadata`: each `X-Metadata-<key>` header
    (the first of repeated ones) gives `<key>` lowercased; an empty key is skipped; a key or
    value that is not printable US-ASCII, a key over 246 bytes or over 4096 bytes in all is a
    400, before anything is written."""
    found: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered.startswith(METADATA_HEADER) and len(lowered) > len(METADATA_HEADER):
            found.setdefault(
                lowered[len(METADATA_HEADER) :].decode("latin-1"), value.decode("latin-1")
            )
    try:
        return dict(_METADATA.validate_python(found))
    except ValidationError as exc:
        raise FilesError(400, f"invalid metadata: {describe(exc)}") from None


async def _tag(link: AgentLink, path: str, size: int, metadata: dict[str, str]) -> dict[str, Any]:
    """Make `metadata` the uploaded file's, as envd does after writing it (an empty write at
    its end, so a file removed meanwhile is not made again), and describe the file with what
    it kept."""
    reply = await link.call(
        {"type": "write", "path": path, "content": "", "offset": size, "metadata": metadata}
    )
    if reply.get("type") == "error":
        raise TransferError(str(reply.get("code")), str(reply.get("message")))
    written: dict[str, Any] = {"name": _name(path), "type": "file", "path": path}
    if reply.get("metadataUnsupported") and metadata:
        # envd logs this too; the answer itself says it by holding no metadata
        log.info("metadata not kept on %s: its filesystem has no user extended attributes", path)
    kept = reply.get("metadata")
    if isinstance(kept, dict) and kept:
        written["metadata"] = kept
    return written


async def serve_files(
    exchange: Exchange, admission: Admission, limit: int, *, only: str | None = None
) -> None:
    """`only`: the one path a signed URL may read or write (its `path` parameter), so a
    multipart upload through it writes that file and no other."""
    if exchange.method == "GET":
        await _download(exchange, admission)
    elif exchange.method == "POST":
        written = await _upload(exchange, admission, limit, only)
        await exchange.respond_json(200, written)
    else:
        raise FilesError(405, f"{exchange.method} is not allowed on /files")


async def _download(exchange: Exchange, admission: Admission) -> None:
    path = _path(exchange.query.get("path"))
    try:
        size, body = await open_download(admission.link, path)
    except TransferError as exc:
        raise files_error(exc) from None
    await exchange.start(
        200,
        "application/octet-stream",
        [
            ("content-disposition", f'attachment; filename="{_name(path)}"'),
            ("x-insien-file-size", str(size)),
        ],
    )
    # A failure past this point can only cut the body short: the client sees a body that
    # ends without its final chunk (chunked encoding), never a short file presented whole.
    async for chunk in body:
        await exchange.write(chunk)
    await exchange.write(b"", more=False)


async def _inflate(chunks: AsyncGenerator[bytes, None], limit: int) -> AsyncIterator[bytes]:
    """A gzip body, decompressed in bounded steps (a small bomb cannot grow past `limit`)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        async with aclosing(chunks) as source:
            async for chunk in source:
                data = chunk
                while data:
                    out = inflater.decompress(data, INFLATE_STEP)
                    data = inflater.unconsumed_tail
                    total += len(out)
                    if total > limit:
                        raise FilesError(413, f"upload exceeds the {limit} byte limit")
                    if out:
                        yield out
        rest = inflater.flush()
    except zlib.error as exc:
        raise FilesError(400, f"the body is not valid gzip: {exc}") from None
    if rest:
        yield rest


async def _upload(
    exchange: Exchange, admission: Admission, limit: int, only: str | None = None
) -> list[dict[str, Any]]:
    content_type = exchange.headers.get("content-type", "")
    declared = exchange.headers.get("content-length", "")
    if (
        declared.isdigit()
        and int(declared) > limit
        and "gzip" not in exchange.headers.get("content-encoding", "")
    ):
        raise FilesError(413, f"upload exceeds the {limit} byte limit")
    try:
        if content_type.startswith("multipart/form-data"):
            return await _upload_parts(exchange, admission, limit, content_type, only)
        path = _path(exchange.query.get("path"))
        metadata = upload_metadata(exchange.scope["headers"])
        body: AsyncIterator[bytes]
        if exchange.headers.get("content-encoding", "").strip().lower() == "gzip":
            body = _inflate(exchange.chunks(), limit)
        else:
            body = exchange.chunks()
        size = await upload(admission.link, path, body, limit, in_place=True)
        return [await _tag(admission.link, path, size, metadata)]
    except TransferError as exc:
        raise files_error(exc) from None
    except ClientGone as exc:
        raise FilesError(400, str(exc)) from None


def _boundary(content_type: str) -> bytes:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise FilesError(400, "multipart/form-data without a boundary")


class _Parts:
    """Drives werkzeug's sans-IO multipart decoder from the request body, one part at a
    time: `next_file` finds the next file part, `data` yields its bytes as they arrive."""

    def __init__(self, exchange: Exchange, content_type: str, limit: int) -> None:
        self._decoder = MultipartDecoder(_boundary(content_type), max_form_memory_size=limit)
        self._body = exchange.chunks()
        self._fed_all = False

    async def _event(self) -> Any:
        while True:
            event = self._decoder.next_event()
            if not isinstance(event, NeedData):
                return event
            if self._fed_all:
                raise FilesError(400, "the multipart body ended early")
            chunk = await anext(self._body, None)
            if chunk is None:
                self._fed_all = True
                self._decoder.receive_data(None)
            else:
                self._decoder.receive_data(chunk)

    async def next_file(self) -> str | None:
        """The filename of the next file part (other fields are skipped), None at the end."""
        while True:
            event = await self._event()
            if isinstance(event, Epilogue):
                return None
            if isinstance(event, File):
                return event.filename or ""
            if isinstance(event, Field):
                while True:  # a plain field's data is not a file: drop it
                    data = await self._event()
                    if not isinstance(data, Data) or not data.more_data:
                        break

    async def data(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._event()
            if not isinstance(event, Data):
                raise FilesError(400, "malformed multipart body")
            if event.data:
                yield bytes(event.data)
            if not event.more_data:
                return


async def _upload_parts(
    exchange: Exchange,
    admission: Admission,
    limit: int,
    content_type: str,
    only: str | None = None,
) -> list[dict[str, Any]]:
    metadata = upload_metadata(exchange.scope["headers"])
    parts = _Parts(exchange, content_type, limit)
    single = exchange.query.get("path")
    written: list[dict[str, Any]] = []
    total = 0
    while (filename := await parts.next_file()) is not None:
        if only is not None and written:
            raise FilesError(403, f"a signed URL writes one file, {only}")
        asked = single if single and not written else filename
        if not asked:
            raise FilesError(400, "a multipart file part needs its path as filename")
        path = _path(asked)
        size = await upload(admission.link, path, parts.data(), limit - total, in_place=True)
        total += size
        written.append(await _tag(admission.link, path, size, metadata))
    if not written:
        raise FilesError(400, "the multipart body has no file")
    return written
