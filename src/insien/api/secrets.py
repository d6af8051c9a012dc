"""`/secrets`: each tenant's secrets (issue 30). Create, list, rotate and delete; no route
answers a value, and none is ever in an error. Sandboxes use them through bindings in their
network policy (`network.secrets`), which `bindings_checked` vets against the caller's own
store: a tenant can bind only its own secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quart import Blueprint, request

from ..egress import NetworkPolicy, RuleError
from ..protocol import ErrorCode
from ..secrets import store as secret_store
from ..tenancy.tenants import Tenant
from .bodies import json_body
from .context import Services
from .errors import ApiError
from .openapi import operation
from .schemas import (
    NetworkRequest,
    SecretCreateRequest,
    SecretDeleted,
    SecretInfo,
    SecretList,
    SecretRotateRequest,
)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _info(found: secret_store.SecretInfo) -> dict[str, Any]:
    return SecretInfo(
        name=found.name,
        description=found.description,
        createdAt=_when(found.created_at),
        updatedAt=_when(found.updated_at),
        version=found.version,
    ).model_dump(mode="json")


def secret_store_of(services: Services) -> secret_store.SecretStore:
    """The server's store, or the 503 saying the operator gave it no key."""
    store: secret_store.SecretStore = services.manager.egress.secrets
    if not store.available:
        raise ApiError(
            503,
            ErrorCode.NOT_SUPPORTED,
            "this server keeps no secrets: its operator set no INSIEN_SECRETS_KEY "
            "(or INSIEN_SECRETS_KEY_FILE)",
        )
    return store


async def bindings_checked(
    services: Services, tenant: Tenant, policy: NetworkPolicy
) -> NetworkPolicy:
    """The policy if every secret it binds is the tenant's own (else the 400 naming the
    first that is not; the name alone says nothing about anyone else's)."""
    if not policy.secrets:
        return policy
    store = secret_store_of(services)
    for binding in policy.secrets:
        if await store.info(tenant.id, binding.secret) is None:
            raise ApiError(
                400, ErrorCode.BAD_REQUEST, f"network: you have no secret {binding.secret!r}"
            )
    return policy


def secrets_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("secrets", __name__)

    @bp.post("/secrets")
    @operation(
        summary="Keep a secret for the egress proxy to add on the way out",
        description="The value is encrypted at rest and never answered again, by any route.",
        body=SecretCreateRequest,
        answer=SecretInfo,
        errors=(400, 409, 429, 503),
        tag="secrets",
    )
    async def create_secret() -> Any:
        tenant = services.tenant_from_key(request)
        store = secret_store_of(services)
        body = await json_body(SecretCreateRequest)
        try:
            made = await store.create(tenant.id, body.name, body.value, body.description)
        except secret_store.SecretError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        except secret_store.SecretExists as exc:
            raise ApiError(409, ErrorCode.ALREADY_EXISTS, str(exc)) from None
        except secret_store.TooManySecrets as exc:
            raise ApiError(429, ErrorCode.QUOTA_EXCEEDED, str(exc)) from None
        return _info(made)

    @bp.get("/secrets")
    @operation(
        summary="Your secrets (names and dates, never values)",
        answer=SecretList,
        errors=(503,),
        tag="secrets",
    )
    async def list_secrets() -> Any:
        tenant = services.tenant_from_key(request)
        found = [_info(item) for item in await secret_store_of(services).list(tenant.id)]
        return SecretList.model_validate({"secrets": found}).model_dump(mode="json")

    @bp.put("/secrets/<name>")
    @operation(
        summary="Rotate a secret: sandboxes bound to it use the new value from the next request",
        body=SecretRotateRequest,
        answer=SecretInfo,
        errors=(400, 404, 503),
        tag="secrets",
    )
    async def rotate_secret(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        store = secret_store_of(services)
        body = await json_body(SecretRotateRequest)
        try:
            return _info(await store.rotate(tenant.id, name, body.value, body.description))
        except secret_store.SecretError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        except secret_store.SecretNotFound as exc:
            raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None

    @bp.delete("/secrets/<name>")
    @operation(
        summary="Delete a secret: requests that would carry it are refused from now on",
        answer=SecretDeleted,
        errors=(404, 503),
        tag="secrets",
    )
    async def delete_secret(name: str) -> Any:
        tenant = services.tenant_from_key(request)
        try:
            await secret_store_of(services).delete(tenant.id, name)
        except secret_store.SecretNotFound as exc:
            raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None
        return SecretDeleted(success=True, name=name).model_dump(mode="json")

    return bp


async def network_with_secrets(
    services: Services,
    tenant: Tenant,
    body: NetworkRequest,
    keep: dict[str, str] | None = None,
) -> NetworkPolicy:
    """A network policy from a request, bindings included and checked (the 400 names the
    first rule or binding that is wrong). `keep`: placeholders the sandbox already has."""
    bound = [binding.model_dump(exclude_none=True) for binding in body.secrets]
    try:
        policy = NetworkPolicy.of(body.allowOut, body.denyOut, body.allowPublicTraffic, bound, keep)
    except RuleError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"network: {exc}") from None
    return await bindings_checked(services, tenant, policy)
