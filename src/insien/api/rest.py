"""REST routes: the seed's `/sandbox/...` paths with the seed's exact response bodies."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ..manager import SandboxNotFound, SandboxStartError, iso_timestamp
from ..protocol import ErrorCode
from ..runtime.docker import DockerError, ImageNotFound
from .context import Services
from .errors import ApiError


def rest_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("rest", __name__)
    manager = services.manager

    @bp.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @bp.post("/sandbox/create")
    async def create_sandbox() -> Any:
        tenant = services.tenant_from_key(request)
        try:
            sandbox = await manager.create(tenant)
        except ImageNotFound as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, f"sandbox image missing: {exc}") from exc
        except (DockerError, SandboxStartError) as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        token = services.auth.issue_token(sandbox.id, tenant)
        return {
            "sandboxId": sandbox.id,
            "agentUrl": services.agent_url(request, sandbox.id, token),
        }

    @bp.post("/sandbox/<sandbox_id>/destroy")
    async def destroy_sandbox(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        try:
            await manager.destroy(sandbox_id, tenant)
        except SandboxNotFound:
            raise _not_found(sandbox_id) from None
        except DockerError as exc:
            raise ApiError(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        return {"success": True, "sandboxId": sandbox_id}

    @bp.get("/sandbox/<sandbox_id>/status")
    async def sandbox_status(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        try:
            sandbox = manager.get(sandbox_id, tenant)
        except SandboxNotFound:
            raise _not_found(sandbox_id) from None
        return {
            "sandboxId": sandbox.id,
            "connected": sandbox.connected,
            "createdAt": iso_timestamp(sandbox.created_at),
        }

    return bp


def _not_found(sandbox_id: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, f"no sandbox {sandbox_id!r}")
