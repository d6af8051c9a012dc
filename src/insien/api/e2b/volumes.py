"""E2B's Volume API (the stock SDKs' `Volume`) on the tenant's own Insien volumes: the control
calls (`/volumes`, `/volumes/{volumeID}`) next to the rest of E2B's control plane, and the
content calls (`/volumecontent/{volumeID}/...`, sent to `E2B_VOLUME_API_URL`) under the same
`/e2b` base. Uploads (`PUT .../file`) are streamed in front of Quart, as Insien's own are
(`serve_volume_upload`, called by api/router.py).

The volume's `token` (which the SDKs send as `Authorization: Bearer` on content calls) is a
token of that one volume (audience `insien:volume`, bound to the key it was made under, so a
revoked key revokes it): it opens that volume's files and nothing else, and no sandbox token
opens them. Content calls also take the tenant's API key. What differs from E2B, said where it
shows: a `volumeID` (`vol_...`) is derived from the runtime volume, and
the name works wherever an id does; owners and modes are not kept (`uid`, `gid`, `mode` are
refused, and answered as 0); folders on the way are always made and files always replaced
(`force` is not needed); a stat's `atime` and `ctime` are its `mtime`."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, Response, request

from ...protocol import ErrorCode
from ...sandboxes.manager import SandboxNotFound
from ...sandboxes.volumes import Spool, Volume, VolumeFull, VolumeNotFound, Volumes, file_path
from ...tenancy.tenants import Tenant
from ..bodies import json_body
from ..context import Services
from ..errors import CORE_ERRORS, ApiError
from ..exchange import ClientGone, Exchange
from ..volumes import SHA256, VOLUME_ERRORS, translated, volume_error

ID_PREFIX = "vol_"
UPLOAD = re.compile(r"^/e2b/volumecontent/(?P<volume>[^/]+)/file$")
"""The one content call served in front of Quart (api/router.py): a streamed upload."""
MAX_LISTINGS = 64
"""Folders one recursive listing (`depth` > 1) may read: each is a volume job."""
UNKEPT = ("uid", "gid", "mode")
KINDS = {"file": "file", "dir": "directory", "symlink": "symlink"}


class NewVolume(BaseModel):
    """E2B's `NewVolume`."""

    model_config = ConfigDict(extra="ignore")
    name: str


def volume_id(volume: Volume) -> str:
    """A volume's E2B id: stable while it lives, another for a volume made again by name."""
    return ID_PREFIX + hashlib.sha256(volume.runtime_name.encode()).hexdigest()[:24]


def key_of(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries: `Authorization: Bearer` (the SDKs' content calls, whose
    volume token is the key) or `X-API-Key`."""
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key")


VOLUME_TOKEN_TTL = 365 * 24 * 3600.0
"""E2B's volume tokens do not expire with a sandbox; a revoked key still ends them."""


def api_key_tenant(services: Services, headers: Mapping[str, str]) -> Tenant:
    """The tenant whose API key the request carries; sandbox tokens open nothing here."""
    found = services.auth.tenant_for_key(key_of(headers))
    if found is None:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "Invalid volume token or API key")
    return found


async def content_volume(
    services: Services, headers: Mapping[str, str], ref: str
) -> tuple[Tenant, Volume]:
    """The volume `ref` names and its owner, for a request carrying that volume's token (as
    `Authorization: Bearer`) or its tenant's API key; any other volume's token opens nothing."""
    by_token = services.auth.volume_token(key_of(headers))
    owner = by_token[0] if by_token else api_key_tenant(services, headers)
    volume = await resolve(services.manager.volumes, owner, ref)
    if by_token is not None and volume_id(volume) != by_token[1]:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "Invalid volume token or API key")
    return owner, volume


async def resolve(volumes: Volumes, owner: Tenant, ref: str) -> Volume:
    """The tenant's own volume `ref` names (its id or its name); VolumeNotFound otherwise."""
    for volume in await volumes.list(owner):
        if ref in (volume_id(volume), volume.name):
            return volume
    raise VolumeNotFound(ref)


def refuse_unkept(query: Mapping[str, str]) -> None:
    """400 for an owner or mode: Insien's volumes keep neither (files are the sandbox user's)."""
    asked = [name for name in UNKEPT if query.get(name) not in (None, "")]
    if asked:
        raise ApiError(
            400,
            ErrorCode.BAD_REQUEST,
            f"{asked[0]}: Insien's volumes keep no owner or mode of their own (files belong to"
            " the sandbox user)",
        )


def normal(path: str) -> str:
    """A volume path as E2B answers it: absolute, without `.` or doubled slashes."""
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def stat(path: str, kind: str, size: int, mtime: float) -> dict[str, Any]:
    """E2B's `VolumeEntryStat` for an entry of `kind` (the volume job's: file, dir, ...)."""
    where = normal(path)
    when = _when(mtime)
    return {
        "name": posixpath.basename(where) or "/",
        "type": KINDS.get(kind, "unknown"),
        "path": where,
        "size": size,
        "mode": 0,
        "uid": 0,
        "gid": 0,
        "atime": when,
        "mtime": when,
        "ctime": when,
    }


async def entry_at(volumes: Volumes, owner: Tenant, volume: Volume, path: str) -> dict[str, Any]:
    """The stat of one path: found in its folder's listing (the root is a folder)."""
    where = normal(file_path(path))
    if where == "/":
        return stat("/", "dir", 0, datetime.now(UTC).timestamp())
    folder, name = posixpath.split(where)
    listed = await volumes.list_files(owner, volume.name, folder)
    for entry in listed["entries"]:
        if entry["name"] == name:
            return stat(where, str(entry["type"]), int(entry["size"]), float(entry["mtime"]))
    raise ApiError(404, ErrorCode.NOT_FOUND, f"path {where!r} not found")


async def listing(
    volumes: Volumes, owner: Tenant, volume: Volume, path: str, depth: int
) -> list[dict[str, Any]]:
    """A folder's entries `depth` levels down (1: its own), breadth first."""
    found: list[dict[str, Any]] = []
    level, read = [normal(file_path(path))], 0
    for _ in range(depth):
        below: list[str] = []
        for folder in level:
            read += 1
            if read > MAX_LISTINGS:
                raise ApiError(
                    400,
                    ErrorCode.BAD_REQUEST,
                    f"depth {depth} reaches more than {MAX_LISTINGS} folders: list less deep",
                )
            listed = await volumes.list_files(owner, volume.name, folder)
            for entry in listed["entries"]:
                where = posixpath.join(folder, str(entry["name"]))
                kind = str(entry["type"])
                found.append(stat(where, kind, int(entry["size"]), float(entry["mtime"])))
                if kind == "dir":
                    below.append(where)
        level = below
    return found


def install_volume_routes(bp: Blueprint, services: Services, tenant: Callable[[], Tenant]) -> None:
    """E2B's volume routes on the E2B blueprint: control calls need the tenant's API key
    (`tenant`), content calls the same key as the volume's bearer token."""

    def volumes() -> Volumes:
        return services.manager.volumes

    def made(volume: Volume, owner: Tenant) -> dict[str, Any]:
        """E2B's `VolumeAndToken`: a token for this volume's files alone."""
        made_id = volume_id(volume)
        token = services.auth.issue_volume_token(made_id, owner, VOLUME_TOKEN_TTL)
        return {"volumeID": made_id, "name": volume.name, "token": token}

    async def content(ref: str) -> tuple[Tenant, Volume]:
        return await content_volume(
            services, {k.lower(): v for k, v in request.headers.items()}, ref
        )

    @bp.post("/volumes")
    @translated
    async def create_volume() -> tuple[dict[str, Any], int]:
        owner = tenant()
        body = await json_body(NewVolume)
        return made(await volumes().create(owner, body.name, None), owner), 201

    @bp.get("/volumes")
    @translated
    async def list_volumes() -> Response:
        owner = tenant()
        found = [{"volumeID": volume_id(v), "name": v.name} for v in await volumes().list(owner)]
        return Response(_json(found), mimetype="application/json")

    @bp.get("/volumes/<ref>")
    @translated
    async def volume_info(ref: str) -> dict[str, Any]:
        owner = tenant()
        return made(await resolve(volumes(), owner, ref), owner)

    @bp.delete("/volumes/<ref>")
    @translated
    async def delete_volume(ref: str) -> tuple[str, int]:
        """Refused (409) while sandboxes mount it: E2B's SDKs have no `force`."""
        owner = tenant()
        volume = await resolve(volumes(), owner, ref)

        async def never(sandbox_id: str) -> None:  # not forced: nothing is destroyed
            raise SandboxNotFound(sandbox_id)

        await volumes().delete(owner, volume.name, False, never)
        return "", 204

    @bp.get("/volumecontent/<ref>/dir")
    @translated
    async def list_dir(ref: str) -> Response:
        owner, volume = await content(ref)
        try:
            depth = int(request.args.get("depth") or "1")
        except ValueError:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "depth is an integer") from None
        if depth < 1:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "depth must be >= 1")
        found = await listing(volumes(), owner, volume, request.args.get("path") or "/", depth)
        return Response(_json(found), mimetype="application/json")

    @bp.post("/volumecontent/<ref>/dir")
    @translated
    async def make_dir(ref: str) -> tuple[dict[str, Any], int]:
        owner, volume = await content(ref)
        refuse_unkept(request.args)
        path = file_path(request.args.get("path"))
        await volumes().make_folder(owner, volume.name, path)
        return stat(path, "dir", 0, datetime.now(UTC).timestamp()), 201

    @bp.get("/volumecontent/<ref>/path")
    @translated
    async def get_path(ref: str) -> dict[str, Any]:
        owner, volume = await content(ref)
        return await entry_at(volumes(), owner, volume, request.args.get("path") or "")

    @bp.patch("/volumecontent/<ref>/path")
    @translated
    async def update_path(ref: str) -> dict[str, Any]:
        await content(ref)
        raise ApiError(
            501,
            ErrorCode.NOT_SUPPORTED,
            "Insien's volumes keep no owner or mode of their own: metadata cannot be changed",
        )

    @bp.delete("/volumecontent/<ref>/path")
    @translated
    async def remove_path(ref: str) -> tuple[str, int]:
        owner, volume = await content(ref)
        path = file_path(request.args.get("path"))
        await volumes().remove_file(owner, volume.name, path)
        return "", 204

    @bp.get("/volumecontent/<ref>/file")
    @translated
    async def download(ref: str) -> Response:
        """Streamed; `X-Insien-Sha256` carries the SHA-256 of the bytes sent."""
        owner, volume = await content(ref)
        path = file_path(request.args.get("path"))
        size, digest, body = await volumes().read_file(owner, volume.name, path)
        response = Response(body, mimetype="application/octet-stream")
        response.headers["X-Insien-File-Size"] = str(size)
        response.headers["X-Insien-Sha256"] = digest
        return response


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def serve_volume_upload(services: Services, exchange: Exchange, ref: str) -> None:
    """`PUT /e2b/volumecontent/{volumeID}/file`: the body spooled to a temporary file a piece at
    a time, then written by a volume job; 201 with the file's stat, and its SHA-256 in
    `X-Insien-Sha256`. With `X-Insien-Sha256` on the request, other bytes are refused (400)."""
    try:
        answer, digest = await _upload(services, exchange, ref)
    except (ApiError, *CORE_ERRORS, *VOLUME_ERRORS) as raised:
        exc = volume_error(raised)
        close = not exchange.body_done and not await exchange.discard_body()
        await exchange.respond_json(
            exc.status,
            {"code": exc.status, "message": exc.message},
            [("connection", "close")] if close else [],
        )
        return
    await exchange.respond_json(201, answer, [("X-Insien-Sha256", digest)])


async def _upload(services: Services, exchange: Exchange, ref: str) -> tuple[dict[str, Any], str]:
    owner, volume = await content_volume(services, exchange.headers, ref)
    refuse_unkept(exchange.query)
    path = file_path(exchange.query.get("path"))
    expected = exchange.headers.get("x-insien-sha256")
    if expected is not None and not SHA256.fullmatch(expected.lower()):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "X-Insien-Sha256 is 64 hexadecimal digits")
    volumes = services.manager.volumes
    limit = min(services.settings.max_upload_bytes, volume.size_limit)
    declared = exchange.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(services, volume)
    spool = Spool()
    try:
        try:
            async for chunk in exchange.chunks():
                await spool.write(chunk)
                if spool.size > limit:
                    raise _too_large(services, volume)
        except ClientGone:
            # Nothing was written: the volume job runs only once the whole body is here.
            raise ApiError(400, ErrorCode.CANCELLED, "the client went away mid-upload") from None
        received = spool.digest.hexdigest()
        if expected is not None and expected.lower() != received:
            raise ApiError(
                400,
                ErrorCode.BAD_REQUEST,
                f"the body's SHA-256 is {received}, X-Insien-Sha256 says {expected.lower()};"
                " nothing was written",
            )
        written = await volumes.write_file(owner, volume.name, path, spool)
    finally:
        spool.close()
    now = datetime.now(UTC).timestamp()
    return stat(path, "file", int(written["size"]), now), str(written["sha256"])


def _too_large(services: Services, volume: Volume) -> Exception:
    """413 past the server's upload limit, 507 past the volume's size limit."""
    if volume.size_limit < services.settings.max_upload_bytes:
        return VolumeFull(f"the volume holds at most {volume.size_limit} bytes")
    limit = services.settings.max_upload_bytes
    return ApiError(413, ErrorCode.TOO_LARGE, f"upload exceeds the {limit} byte limit")
