"""REST routes of volumes (`/volumes`): make, list, describe and delete a tenant's volumes, and
their files without a sandbox. Uploads (`PUT /volumes/<name>/files`) are served in front of
Quart, as the sandboxes' are (files.py): the body is spooled to a temporary file a piece at a
time, never whole in memory, then written by a volume job (sandboxes/volumes.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError
from quart import Blueprint, Response, request

from ..protocol import ErrorCode, describe
from ..sandboxes.manager import SandboxNotFound
from ..sandboxes.volumes import (
    BadVolume,
    Spool,
    VolumeBusy,
    VolumeCorrupt,
    VolumeExists,
    VolumeFileError,
    VolumeFull,
    VolumeNotFound,
    Volumes,
    file_path,
)
from ..tenancy.resources import parse_size
from .bodies import json_body
from .context import Services
from .errors import CORE_ERRORS, ApiError, api_error_for, status_for
from .exchange import ClientGone, Exchange
from .files import DeclaredTooLarge, answer_upload
from .openapi import OUTSIDE_QUART, Operation, operation
from .schemas import (
    VolumeCreateRequest,
    VolumeDeleted,
    VolumeDeleteQuery,
    VolumeDetail,
    VolumeEntries,
    VolumeFileDone,
    VolumeFileQuery,
    VolumeList,
    VolumeSummary,
    VolumeWritten,
)

UPLOAD_PATH = re.compile(r"^/volumes/(?P<name>[^/]+)/files$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
P = ParamSpec("P")
R = TypeVar("R")

OUTSIDE_QUART.append(
    (
        "put",
        "/volumes/{name}/files",
        Operation(
            summary="Write a file into a volume, without a sandbox (raw bytes streamed in)",
            description="Folders on the way are made. The answer carries the size and SHA-256 "
            "of what the volume now holds; 507 when the volume would pass its size limit. "
            "With `X-Insien-Sha256` (the body's SHA-256, hex), a body that does not match is "
            "refused (400) and nothing is written; either way the volume job checks what it "
            "copied against what the server received before the file takes its name.",
            answer=VolumeWritten,
            body="bytes",
            query=VolumeFileQuery,
            errors=(400, 404, 413, 507),
            tag="volumes",
        ),
    )
)


def volume_error(exc: Exception) -> ApiError:
    """The HTTP answer for what the volumes core raises (the rest: `api_error_for`)."""
    if isinstance(exc, BadVolume):
        return ApiError(400, ErrorCode.BAD_REQUEST, str(exc))
    if isinstance(exc, VolumeNotFound):
        return ApiError(404, ErrorCode.NOT_FOUND, f"no volume {exc.args[0]!r}")
    if isinstance(exc, VolumeExists):
        return ApiError(409, ErrorCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, VolumeBusy):
        return ApiError(409, ErrorCode.BUSY, str(exc))
    if isinstance(exc, VolumeFull):
        return ApiError(507, ErrorCode.TOO_LARGE, str(exc))
    if isinstance(exc, VolumeCorrupt):
        return ApiError(500, ErrorCode.INTERNAL, str(exc))
    if isinstance(exc, VolumeFileError):
        return ApiError(status_for(exc.code), exc.code, exc.message)
    return api_error_for(exc)


VOLUME_ERRORS = (
    BadVolume,
    VolumeNotFound,
    VolumeExists,
    VolumeBusy,
    VolumeFull,
    VolumeCorrupt,
    VolumeFileError,
)


def translated(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A route whose volume errors become their HTTP answers."""

    @wraps(view)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await view(*args, **kwargs)
        except VOLUME_ERRORS as exc:
            raise volume_error(exc) from None

    return run


def _size_limit(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"sizeLimit: {exc}") from None


def volumes_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("volumes", __name__)

    def volumes() -> Volumes:
        return services.manager.volumes

    @bp.post("/volumes")
    @operation(
        summary="Make a volume",
        description="Storage that outlives sandboxes: mount it at create (`volumes`), or "
        "reach its files without a sandbox. The size limit is enforced by the server's "
        "accounting (README, Volumes).",
        body=VolumeCreateRequest,
        answer=VolumeSummary,
        errors=(400, 409, 429, 501, 503),
        tag="volumes",
    )
    @translated
    async def create_volume() -> Any:
        tenant = services.tenant_from_key(request)
        body = await json_body(VolumeCreateRequest)
        made = await volumes().create(tenant, body.name, _size_limit(body.sizeLimit))
        return VolumeSummary.model_validate(made.info()).model_dump(mode="json")

    @bp.get("/volumes")
    @operation(summary="Your volumes", answer=VolumeList, tag="volumes")
    @translated
    async def list_volumes() -> Any:
        tenant = services.tenant_from_key(request)
        found = [volume.info() for volume in await volumes().list(tenant)]
        return VolumeList.model_validate({"volumes": found}).model_dump(mode="json")

    @bp.get("/volumes/<name>")
    @operation(
        summary="A volume: bytes used now and the sandboxes that mount it",
        answer=VolumeDetail,
        errors=(404, 503),
        tag="volumes",
    )
    @translated
    async def volume_info(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        volume, usage = await volumes().usage(tenant, name)
        detail = {**volume.info(), "bytesUsed": usage.bytes_used, "sandboxes": usage.sandboxes}
        return VolumeDetail.model_validate(detail).model_dump(mode="json")

    @bp.delete("/volumes/<name>")
    @operation(
        summary="Delete a volume and its files",
        description="Refused (409) while sandboxes mount it, unless `force=true`: then they "
        "are destroyed first.",
        query=VolumeDeleteQuery,
        answer=VolumeDeleted,
        errors=(400, 404, 409),
        tag="volumes",
    )
    @translated
    async def delete_volume(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        try:
            query = VolumeDeleteQuery.model_validate(request.args.to_dict())
        except ValidationError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, describe(exc)) from None

        async def destroy(sandbox_id: str) -> None:
            # Ended meanwhile, or not this tenant's (never destroyed for them).
            with contextlib.suppress(SandboxNotFound):
                await services.manager.destroy(sandbox_id, tenant)

        await volumes().delete(tenant, name, query.force, destroy)
        return VolumeDeleted(success=True, name=name).model_dump(mode="json")

    @bp.get("/volumes/<name>/entries")
    @operation(
        summary="List a folder of a volume, without a sandbox",
        query=VolumeFileQuery,
        answer=VolumeEntries,
        errors=(400, 403, 404, 503),
        tag="volumes",
    )
    @translated
    async def list_entries(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = file_path(request.args.get("path") or "/")
        found = await volumes().list_files(tenant, name, path)
        return VolumeEntries.model_validate({"path": path, **found}).model_dump(mode="json")

    @bp.get("/volumes/<name>/files")
    @operation(
        summary="Read a file of a volume, without a sandbox (raw bytes streamed out)",
        description="`X-Insien-Sha256` carries the SHA-256 of the bytes sent.",
        query=VolumeFileQuery,
        answer="bytes",
        errors=(400, 403, 404, 503),
        tag="volumes",
    )
    @translated
    async def download(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = file_path(request.args.get("path"))
        size, digest, body = await volumes().read_file(tenant, name, path)
        response = Response(body, mimetype="application/octet-stream")
        response.headers["X-Insien-File-Size"] = str(size)
        response.headers["X-Insien-Sha256"] = digest
        return response

    @bp.delete("/volumes/<name>/files")
    @operation(
        summary="Remove a file or a folder (with everything in it) from a volume",
        query=VolumeFileQuery,
        answer=VolumeFileDone,
        errors=(400, 403, 404, 503),
        tag="volumes",
    )
    @translated
    async def remove(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = file_path(request.args.get("path"))
        await volumes().remove_file(tenant, name, path)
        return VolumeFileDone(success=True, path=path).model_dump(mode="json")

    @bp.post("/volumes/<name>/folders")
    @operation(
        summary="Make a folder (and those on the way) in a volume",
        query=VolumeFileQuery,
        answer=VolumeFileDone,
        errors=(400, 403, 404, 503),
        tag="volumes",
    )
    @translated
    async def make_folder(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        path = file_path(request.args.get("path"))
        await volumes().make_folder(tenant, name, path)
        return VolumeFileDone(success=True, path=path).model_dump(mode="json")

    return bp


async def serve_volume_upload(services: Services, exchange: Exchange, name: str) -> None:
    """`PUT /volumes/<name>/files?path=…`: the body spooled, checked, then written by a
    volume job."""
    await answer_upload(
        exchange,
        lambda: _upload(services, name, exchange),
        (ApiError, *CORE_ERRORS, *VOLUME_ERRORS),
        volume_error,
    )


async def _upload(services: Services, name: str, exchange: Exchange) -> dict[str, Any]:
    tenant = services.auth.tenant_for_key(exchange.headers.get("x-api-key"))
    if tenant is None:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")
    path = file_path(exchange.query.get("path"))
    expected = exchange.headers.get("x-insien-sha256")
    if expected is not None and not SHA256.fullmatch(expected.lower()):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "X-Insien-Sha256 is 64 hexadecimal digits")
    volume = await services.manager.volumes.get(tenant, name)
    limit = services.settings.max_upload_bytes
    declared = exchange.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise DeclaredTooLarge(
                413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit"
            )
        if int(declared) > volume.size_limit:
            # Not read, but drained (up to a bound) so that the client sees the answer.
            raise VolumeFull(f"the volume holds at most {volume.size_limit} bytes")
    spool = Spool()
    try:
        async for chunk in _body(exchange):
            await spool.write(chunk)
            if spool.size > limit:
                raise ApiError(413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit")
            if spool.size > volume.size_limit:
                raise VolumeFull(f"the volume holds at most {volume.size_limit} bytes")
        received = spool.digest.hexdigest()
        if expected is not None and expected.lower() != received:
            raise ApiError(
                400,
                ErrorCode.BAD_REQUEST,
                f"the body's SHA-256 is {received}, X-Insien-Sha256 says "
                f"{expected.lower()}; nothing was written",
            )
        written = await services.manager.volumes.write_file(tenant, name, path, spool)
    finally:
        spool.close()
    return VolumeWritten(
        success=True, path=path, bytes=int(written["size"]), sha256=str(written["sha256"])
    ).model_dump(mode="json")


async def _body(exchange: Exchange) -> AsyncIterator[bytes]:
    try:
        async for chunk in exchange.chunks():
            yield chunk
    except ClientGone:
        # Nothing was written: the volume job runs only once the whole body is here.
        raise ApiError(400, ErrorCode.CANCELLED, "the client went away mid-upload") from None
