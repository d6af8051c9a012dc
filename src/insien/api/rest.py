"""REST routes: the seed's `/sandbox/...` paths with the seed's exact response bodies, and the
resource routes (`/sandboxes`) that describe sandboxes in full."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Blueprint, request

from ..egress import NetworkPolicy
from ..link import AgentGone
from ..protocol import ErrorCode, describe
from ..sandboxes.access import Surface
from ..sandboxes.egress import EgressCounters
from ..sandboxes.sandbox import Sandbox, SandboxOptions, iso_timestamp
from ..tenancy.tenants import Tenant
from .bodies import json_body
from .context import Services
from .creating import sandbox_options
from .errors import ApiError, error_code, status_for
from .openapi import operation
from .schemas import (
    MAX_PAGE,
    Created,
    CreateRequest,
    Destroyed,
    Health,
    KeepaliveRequest,
    Killed,
    ListQuery,
    Logs,
    Metrics,
    NetworkInfo,
    NetworkRequest,
    SandboxInfo,
    SandboxPage,
    SeedStatus,
    SnapshotDeleted,
    SnapshotList,
    SnapshotMade,
)
from .secrets import network_with_secrets


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
            network=await policy_of(body.network, tenant) if body.network else None,
            volumes=body.volumes,
        )

    async def policy_of(
        body: NetworkRequest, tenant: Tenant, keep: dict[str, str] | None = None
    ) -> NetworkPolicy:
        return await network_with_secrets(services, tenant, body, keep)

    def network_of(sandbox: Sandbox) -> dict[str, Any]:
        counters = manager.egress.counters_for(sandbox.id) if sandbox.connected else None
        info = {
            "sandboxId": sandbox.id,
            **sandbox.options.network_policy.to_json(),
            "egress": (counters or EgressCounters()).info(),
        }
        return NetworkInfo.model_validate(info).model_dump(mode="json")

    def info_of(sandbox: Sandbox) -> dict[str, Any]:
        return SandboxInfo.model_validate(sandbox.info()).model_dump(mode="json")

    @bp.get("/health")
    @operation(summary="Is the service up", answer=Health, auth=False, tag="meta")
    async def health() -> Any:
        # No key needed, so nothing about any tenant: only how many pooled sandboxes are ready.
        return Health(status="ok", pool=manager.pool_ready()).model_dump(mode="json")

    @bp.post("/sandbox/create")
    @operation(
        summary="Create a sandbox (the seed's route)",
        body=CreateRequest,
        answer=Created,
        errors=(400, 429, 503),
    )
    async def create_sandbox() -> Any:
        tenant = services.tenant_from_key(request)
        chosen = await options(await json_body(CreateRequest), tenant)
        sandbox = await manager.create(tenant, chosen)
        token = services.auth.issue_token(sandbox.id, tenant)
        made = Created(
            sandboxId=sandbox.id, agentUrl=services.agent_url(request, sandbox.id, token)
        )
        return made.model_dump(mode="json")

    @bp.post("/sandbox/<sandbox_id>/connect")
    @operation(
        summary="A fresh agentUrl for an existing sandbox",
        description="For clients that cannot send `X-API-Key` on a WebSocket (browsers): the "
        "URL carries a short-lived token for this sandbox only.",
        answer=Created,
        errors=(404,),
    )
    async def connect_sandbox(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        sandbox = lookup(sandbox_id, tenant)
        token = services.auth.issue_token(sandbox.id, tenant)
        made = Created(
            sandboxId=sandbox.id, agentUrl=services.agent_url(request, sandbox.id, token)
        )
        return made.model_dump(mode="json")

    @bp.post("/sandbox/<sandbox_id>/destroy")
    @operation(summary="Destroy a sandbox and its container", answer=Destroyed, errors=(404,))
    async def destroy_sandbox(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        await manager.destroy(sandbox_id, tenant)
        return Destroyed(success=True, sandboxId=sandbox_id).model_dump(mode="json")

    @bp.get("/sandbox/<sandbox_id>/status")
    @operation(summary="The seed's status of a sandbox", answer=SeedStatus, errors=(404,))
    async def sandbox_status(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        sandbox = lookup(sandbox_id, tenant, include_ended=True)
        status = SeedStatus(
            sandboxId=sandbox.id,
            connected=sandbox.connected,
            createdAt=iso_timestamp(sandbox.created_at),
        )
        return status.model_dump(mode="json")

    @bp.post("/sandbox/<sandbox_id>/keepalive")
    @operation(
        summary="Extend a sandbox's life from now (by `timeout`, or its own)",
        body=KeepaliveRequest,
        answer=SandboxInfo,
        errors=(400, 404),
    )
    async def keepalive(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        body = await json_body(KeepaliveRequest)
        lookup(sandbox_id, tenant)
        return info_of(manager.keepalive(sandbox_id, tenant, body.timeout))

    @bp.post("/sandbox/<sandbox_id>/pause")
    @operation(summary="Freeze a sandbox", answer=SandboxInfo, errors=(404, 503))
    async def pause(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return info_of(await manager.pause(sandbox_id, tenant))

    @bp.post("/sandbox/<sandbox_id>/resume")
    @operation(summary="Unfreeze a sandbox", answer=SandboxInfo, errors=(404, 503))
    async def resume(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return info_of(await manager.resume(sandbox_id, tenant))

    @bp.post("/sandbox/<sandbox_id>/snapshot")
    @operation(
        summary="Save a sandbox's files as a template",
        answer=SnapshotMade,
        errors=(404, 429, 503),
        tag="snapshots",
    )
    async def snapshot(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        template = await manager.snapshot(sandbox_id, tenant)
        return SnapshotMade(sandboxId=sandbox_id, template=template).model_dump(mode="json")

    @bp.get("/snapshots")
    @operation(summary="Your snapshots", answer=SnapshotList, tag="snapshots")
    async def list_snapshots() -> Any:
        """The caller's snapshots: `template` (to create from), source sandbox, age, bytes."""
        tenant = services.tenant_from_key(request)
        found = SnapshotList.model_validate({"snapshots": await manager.snapshots.list(tenant)})
        return found.model_dump(mode="json")

    @bp.delete("/snapshots/<template>")
    @operation(summary="Delete a snapshot", answer=SnapshotDeleted, errors=(404,), tag="snapshots")
    async def delete_snapshot(template: str) -> Any:
        tenant = services.tenant_from_key(request)
        await manager.snapshots.delete(tenant, template)
        return SnapshotDeleted(success=True, template=template).model_dump(mode="json")

    @bp.post("/sandbox/<sandbox_id>/kill-all")
    @operation(
        summary="Kill every process of the sandbox user (the way back from a fork bomb)",
        answer=Killed,
        errors=(404, 503),
    )
    async def kill_all(sandbox_id: str) -> Any:
        """Kill every process of the sandbox user: the way back from a fork bomb."""
        tenant = services.tenant_from_key(request)
        admission = services.gate.for_tenant(sandbox_id, tenant)
        try:
            reply = await admission.link.call({"type": "killAll"})
        except AgentGone as exc:
            raise ApiError(503, ErrorCode.AGENT_GONE, str(exc)) from None
        if reply.get("type") == "error":
            code = error_code(reply.get("code"))
            raise ApiError(status_for(code), code, str(reply.get("message")))
        return Killed(sandboxId=sandbox_id, killed=int(reply.get("killed", 0))).model_dump()

    @bp.get("/sandboxes/<sandbox_id>")
    @operation(summary="Everything about a sandbox", answer=SandboxInfo, errors=(404,))
    async def sandbox_info(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return info_of(lookup(sandbox_id, tenant, include_ended=True))

    @bp.get("/sandboxes/<sandbox_id>/network")
    @operation(
        summary="A sandbox's network policy and egress counters", answer=NetworkInfo, errors=(404,)
    )
    async def sandbox_network(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        return network_of(lookup(sandbox_id, tenant))

    @bp.put("/sandbox/<sandbox_id>/network")
    @operation(
        summary="Change a running sandbox's network policy (new connections follow it)",
        body=NetworkRequest,
        answer=NetworkInfo,
        errors=(400, 404),
    )
    async def update_network(sandbox_id: str) -> Any:
        tenant = services.tenant_from_key(request)
        keep = manager.get(sandbox_id, tenant).options.network_policy.placeholders()
        policy = await policy_of(await json_body(NetworkRequest), tenant, keep)
        return network_of(await manager.update_network(sandbox_id, tenant, policy))

    @bp.get("/sandboxes/<sandbox_id>/metrics")
    @operation(summary="What a sandbox uses now", answer=Metrics, errors=(404, 503))
    async def sandbox_metrics(sandbox_id: str) -> Any:
        """CPU, memory, disk and pids now (see sandboxes/usage.py); reading is not activity."""
        tenant = services.tenant_from_key(request)
        record = services.gate.for_tenant(sandbox_id, tenant, Surface.RECORD)
        reading = await manager.usage.read(record.sandbox)
        egress = manager.egress.counters_for(sandbox_id)
        traffic = record.link.traffic
        return Metrics(
            sandboxId=sandbox_id,
            **reading.info(),
            egressBytesOut=egress.bytes_out,
            egressBytesIn=egress.bytes_in,
            portBytesIn=traffic.get(("ports", "out"), 0),
            portBytesOut=traffic.get(("ports", "in"), 0),
            series=[point.point() for point in manager.usage.series(sandbox_id)],
        ).model_dump(mode="json")

    @bp.get("/sandboxes/<sandbox_id>/logs")
    @operation(summary="A sandbox agent's own log", answer=Logs, errors=(404,))
    async def sandbox_logs(sandbox_id: str) -> Any:
        """The agent's own log: its last 200 stderr lines (ended sandboxes too)."""
        tenant = services.tenant_from_key(request)
        record = services.gate.for_tenant(sandbox_id, tenant, Surface.RECORD, include_ended=True)
        lines = record.link.stderr.recent()
        logs = Logs.model_validate(
            {"sandboxId": sandbox_id, "logs": [{"timestamp": t, "line": x} for t, x in lines]}
        )
        return logs.model_dump(mode="json")

    @bp.get("/sandboxes")
    @operation(
        summary="Your sandboxes, recently ended ones too, a page at a time",
        description="`metadata.<name>=<value>` keeps those with that label (repeat for more).",
        query=ListQuery,
        answer=SandboxPage,
        errors=(400,),
    )
    async def list_sandboxes() -> Any:
        tenant = services.tenant_from_key(request)
        try:
            query = ListQuery.model_validate(request.args.to_dict())
        except ValidationError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, describe(exc)) from None
        limit, start = min(query.limit, MAX_PAGE), query.cursor
        wanted = {
            k.removeprefix("metadata."): v
            for k, v in request.args.items()
            if k.startswith("metadata.")
        }
        found = [
            s
            for s in manager.list(tenant)
            if (query.state is None or s.state == query.state)
            and all(s.options.metadata.get(k) == v for k, v in wanted.items())
        ]
        page = found[start : start + limit]
        following = start + limit if start + limit < len(found) else None
        answer = SandboxPage(
            sandboxes=[SandboxInfo.model_validate(s.info()) for s in page],
            nextCursor=str(following) if following is not None else None,
        )
        return answer.model_dump(mode="json")

    return bp
