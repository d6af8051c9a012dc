"""REST routes: the seed's `/sandbox/...` paths with the seed's exact response bodies, and the
resource routes (`/sandboxes`) that describe sandboxes in full."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from quart import Blueprint, request

from ..link import AgentGone
from ..protocol import ErrorCode
from ..sandboxes.sandbox import Sandbox, SandboxOptions, State, iso_timestamp
from ..tenancy.tenants import Tenant
from .bodies import json_body
from .context import Services
from .creating import Label, ResourcesRequest, Seconds, sandbox_options
from .errors import ApiError, error_code, status_for

MAX_PAGE = 200


class CreateRequest(BaseModel):
    """The body of `POST /sandbox/create`; every field is optional, unknown ones refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    template: StrictStr | None = None
    timeout: Seconds | None = None
    idleTimeout: Seconds | None = None
    metadata: Annotated[dict[Label, StrictStr], Field(max_length=64)] = {}
    env: Annotated[dict[Label, StrictStr], Field(max_length=256)] = {}
    resources: ResourcesRequest | None = None


class KeepaliveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    timeout: Seconds | None = None


def rest_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("rest", __name__)
    manager = services.manager

    def lookup(sandbox_id: str, tenant: Tenant, *, include_ended: bool = False) -> Sandbox:
        # Looking at a sandbox (status, info, list) is not activity: a dashboard polling it
        # must not keep it alive. Using it is: RPC, a connected client, files, keepalive.
        return manager.get(sandbox_id, tenant, include_ended=include_ended)

    async def options(body: CreateRequest, tenant: Tenant) -> SandboxOptions:
        return await sandbox_options(
            services,
            tenant,
            template=body.template,
            lifetime=body.timeout,
            idle_timeout=body.idleTimeout,
            metadata=body.metadata,
            env=body.env,
            resources=body.resources,
        )

    @bp.get("/health")
    async def health() -> Any:
        # No key needed, so nothing about any tenant: only how many pooled sandboxes are ready.
        return {"status": "ok", "pool": manager.pool_ready()}

    @bp.post("/sandbox/create")
    async def create_sandbox() -> Any:
        tenant = services.tenant_from_key(request)
        chosen = await options(await json_body(CreateRequest), tenant)
        sandbox = await manager.create(tenant, chosen)
        token = services.auth.issue_token(sandbox.id, tenant)
        return {
            "sandboxId": sandbox.id,
            "agentUrl": services.agent_url(request, sandbox.id, token),
        }

    @bp.post("/sandbox/<sandbox_id>/destroy")
    async def destroy_sandbox(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        await manager.destroy(sandbox_id, tenant)
        return {"success": True, "sandboxId": sandbox_id}

    @bp.get("/sandbox/<sandbox_id>/status")
    async def sandbox_status(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        sandbox = lookup(sandbox_id, tenant, include_ended=True)
        return {
            "sandboxId": sandbox.id,
            "connected": sandbox.connected,
            "createdAt": iso_timestamp(sandbox.created_at),
        }

    @bp.post("/sandbox/<sandbox_id>/keepalive")
    async def keepalive(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        body = await json_body(KeepaliveRequest)
        lookup(sandbox_id, tenant)
        return manager.keepalive(sandbox_id, tenant, body.timeout).info()

    @bp.post("/sandbox/<sandbox_id>/pause")
    async def pause(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return (await manager.pause(sandbox_id, tenant)).info()

    @bp.post("/sandbox/<sandbox_id>/resume")
    async def resume(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return (await manager.resume(sandbox_id, tenant)).info()

    @bp.post("/sandbox/<sandbox_id>/snapshot")
    async def snapshot(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        template = await manager.snapshot(sandbox_id, tenant)
        return {"sandboxId": sandbox_id, "template": template}

    @bp.get("/snapshots")
    async def list_snapshots() -> Any:
        """The caller's snapshots: `template` (to create from), source sandbox, age, bytes."""
        tenant = services.tenant_from_key(request)
        return {"snapshots": await manager.snapshots.list(tenant)}

    @bp.delete("/snapshots/<template>")
    async def delete_snapshot(template: str) -> Any:
        tenant = services.tenant_from_key(request)
        await manager.snapshots.delete(tenant, template)
        return {"success": True, "template": template}

    @bp.post("/sandbox/<sandbox_id>/kill-all")
    async def kill_all(sandbox_id: str) -> Any:
        """Kill every process of the sandbox user: the way back from a fork bomb."""
        tenant = services.tenant_from_key(request)
        sandbox = lookup(sandbox_id, tenant)
        sandbox.touch()
        try:
            reply = await sandbox.link.call({"type": "killAll"})
        except AgentGone as exc:
            raise ApiError(503, ErrorCode.AGENT_GONE, str(exc)) from None
        if reply.get("type") == "error":
            code = error_code(reply.get("code"))
            raise ApiError(status_for(code), code, str(reply.get("message")))
        return {"sandboxId": sandbox_id, "killed": reply.get("killed", 0)}

    @bp.get("/sandboxes/<sandbox_id>")
    async def sandbox_info(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return lookup(sandbox_id, tenant, include_ended=True).info()

    @bp.get("/sandboxes/<sandbox_id>/metrics")
    async def sandbox_metrics(sandbox_id: str) -> Any:
        """CPU, memory, disk and pids now (see sandboxes/usage.py); reading is not activity."""
        tenant = services.tenant_from_key(request)
        reading = await manager.usage.read(lookup(sandbox_id, tenant))
        return {"sandboxId": sandbox_id, **reading.info()}

    @bp.get("/sandboxes/<sandbox_id>/logs")
    async def sandbox_logs(sandbox_id: str) -> Any:
        """The agent's own log: its last 200 stderr lines (ended sandboxes too)."""
        tenant = services.tenant_from_key(request)
        lines = lookup(sandbox_id, tenant, include_ended=True).link.stderr.recent()
        return {"sandboxId": sandbox_id, "logs": [{"timestamp": t, "line": x} for t, x in lines]}

    @bp.get("/sandboxes")
    async def list_sandboxes() -> Any:
        tenant = services.tenant_from_key(request)
        args = request.args
        state = args.get("state")
        if state is not None and state not in {s.value for s in State}:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown state {state!r}")
        try:
            limit = min(int(args.get("limit", "50")), MAX_PAGE)
            start = int(args.get("cursor", "0"))
        except ValueError:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit and cursor are integers") from None
        if limit < 1 or start < 0:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit must be >= 1 and cursor >= 0")
        wanted = {
            k.removeprefix("metadata."): v for k, v in args.items() if k.startswith("metadata.")
        }
        found = [
            s
            for s in manager.list(tenant)
            if (state is None or s.state == state)
            and all(s.options.metadata.get(k) == v for k, v in wanted.items())
        ]
        page = found[start : start + limit]
        following = start + limit if start + limit < len(found) else None
        return {
            "sandboxes": [s.info() for s in page],
            "nextCursor": str(following) if following is not None else None,
        }

    return bp
