"""E2B's Secrets API (`Secret.create`, `update`, `get_info`, `list`, `exists`, `destroy` of the
stock SDKs: `/secrets` and `/secrets/{secretID}`) on the tenant's own store, the one Insien's
`/secrets` keeps: a secret made either way is the same secret. Values are taken, never
answered (no route here returns one, nor puts one in an error).

What differs from E2B, said where it shows: names are stored as `canonical_name` makes them
(lower case, `-` as `_`) and must then be Insien names (a letter first, at most 64); a
secret's metadata is its Insien description (`{"description": ...}`, no other key); each
secret has one version (an update replaces it, `currentVersion` counts updates); an id
(`sec_...`) is derived from the name and creation time, so it changes when a secret is
deleted and made again, as E2B's does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from quart import Blueprint, Response, request

from ...protocol import ErrorCode
from ...secrets import store as secret_store
from ...tenancy.tenants import Tenant
from ..bodies import json_body
from ..context import Services
from ..errors import ApiError
from ..secrets import secret_store_of
from .rules import canonical_name

ID_PREFIX = "sec_"
MAX_PAGE = 100
DESCRIPTION = "description"

Metadata = Annotated[dict[str, Annotated[StrictStr, Field(max_length=1024)]], Field(max_length=32)]


class NewSecret(BaseModel):
    """E2B's `NewSecret`."""

    model_config = ConfigDict(extra="ignore")
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    value: StrictStr
    metadata: Metadata | None = None


class SecretUpdate(BaseModel):
    """E2B's `SecretUpdate`: a new value; metadata, when given, replaces the old."""

    model_config = ConfigDict(extra="ignore")
    value: StrictStr
    metadata: Metadata | None = None


def secret_id(info: secret_store.SecretInfo) -> str:
    """A secret's E2B id: stable for as long as the secret lives."""
    digest = hashlib.sha256(f"{info.name.upper()}\0{info.created_at!r}".encode()).hexdigest()
    return ID_PREFIX + digest[:24]


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def answer(info: secret_store.SecretInfo) -> dict[str, Any]:
    """E2B's `Secret`: metadata only."""
    return {
        "secretID": secret_id(info),
        "name": info.name,
        "currentVersion": info.version,
        "metadata": {DESCRIPTION: info.description} if info.description else {},
        "createdAt": _when(info.created_at),
        "updatedAt": _when(info.updated_at),
    }


def description_of(metadata: dict[str, str] | None) -> str | None:
    """The description E2B metadata sets (None: keep the old one); 400 for other keys."""
    if metadata is None:
        return None
    other = sorted(set(metadata) - {DESCRIPTION})
    if other:
        raise ApiError(
            400,
            ErrorCode.BAD_REQUEST,
            f"metadata: Insien keeps one description per secret, so metadata holds only"
            f" {DESCRIPTION!r} (not {other[0]!r})",
        )
    return metadata.get(DESCRIPTION, "")


def named(owned: Sequence[secret_store.SecretInfo], ref: str) -> secret_store.SecretInfo | None:
    """The secret among `owned` (one tenant's) an E2B reference names: its id (`sec_...`) or
    its name, in any case, `-` for `_`."""
    if ref.startswith(ID_PREFIX):
        by_id = next((info for info in owned if secret_id(info) == ref), None)
        if by_id is not None:
            return by_id
    wanted = canonical_name(ref).upper()
    return next((info for info in owned if info.name.upper() == wanted), None)


def install_secret_routes(bp: Blueprint, services: Services, tenant: Callable[[], Tenant]) -> None:
    """E2B's secret routes on the E2B blueprint; each needs the tenant's API key."""

    async def owned(
        owner: Tenant, ref: str
    ) -> tuple[secret_store.SecretStore, secret_store.SecretInfo]:
        """The store and the tenant's own secret `ref` names (only its own are looked at)."""
        store = secret_store_of(services)
        found = named(await store.list(owner.id), ref)
        if found is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"secret {ref!r} not found")
        return store, found

    @bp.get("/secrets")
    async def list_secrets() -> Response:
        """Sorted by name; `nextToken` is the last name of the page before."""
        owner = tenant()
        store = secret_store_of(services)
        try:
            limit = min(int(request.args.get("limit", str(MAX_PAGE))), MAX_PAGE)
        except ValueError:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit is an integer") from None
        if limit < 1:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit must be >= 1")
        after = request.args.get("nextToken") or ""
        found = [
            i for i in await store.list(owner.id) if not after or i.name.upper() > after.upper()
        ]
        found.sort(key=lambda info: info.name.upper())
        page = found[:limit]
        response = Response(
            json.dumps([answer(info) for info in page]), status=200, mimetype="application/json"
        )
        if len(found) > limit:
            response.headers["x-next-token"] = page[-1].name
        return response

    @bp.post("/secrets")
    async def create_secret() -> tuple[dict[str, Any], int]:
        owner = tenant()
        store = secret_store_of(services)
        body = await json_body(NewSecret)
        name = canonical_name(body.name)
        if name.startswith(ID_PREFIX):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "the sec_ prefix is for secret ids")
        description = description_of(body.metadata) or ""
        try:
            made = await store.create(owner.id, name, body.value, description)
        except secret_store.SecretError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"{exc} (asked for {name!r})") from None
        except secret_store.SecretExists as exc:
            raise ApiError(409, ErrorCode.ALREADY_EXISTS, str(exc)) from None
        except secret_store.TooManySecrets as exc:
            raise ApiError(429, ErrorCode.QUOTA_EXCEEDED, str(exc)) from None
        return answer(made), 201

    @bp.get("/secrets/<ref>")
    async def get_secret(ref: str) -> dict[str, Any]:
        return answer((await owned(tenant(), ref))[1])

    @bp.post("/secrets/<ref>")
    async def update_secret(ref: str) -> dict[str, Any]:
        """A new value, used from the proxy's next request on."""
        owner = tenant()
        body = await json_body(SecretUpdate)
        store, found = await owned(owner, ref)
        description = description_of(body.metadata)
        try:
            rotated = await store.rotate(owner.id, found.name, body.value, description)
        except secret_store.SecretError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        except secret_store.SecretNotFound as exc:  # deleted meanwhile
            raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None
        return answer(rotated)

    @bp.delete("/secrets/<ref>")
    async def delete_secret(ref: str) -> tuple[str, int]:
        """Gone at once: the proxy refuses the next request that would carry it."""
        owner = tenant()
        store, found = await owned(owner, ref)
        try:
            await store.delete(owner.id, found.name)
        except secret_store.SecretNotFound as exc:
            raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None
        return "", 204
