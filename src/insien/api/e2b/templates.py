"""E2B's template builder routes (`Template.build` of the stock SDKs) on the control plane:
request a build (`POST /v3/templates`), hand over the files COPY steps need (a link per files
hash the SDK PUTs a tar to, without its key), start it with the steps
(`POST /v2/templates/{id}/builds/{build}`), follow its status and logs, and look up, tag and
delete templates. Every route is the tenant's key's alone: a template, its builds and its
uploads are invisible to everyone else. The builds themselves are `sandboxes/templates.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request

from ...protocol import ErrorCode
from ...sandboxes.sandbox import Sandbox
from ...sandboxes.templates import (
    READY_SECONDS,
    Build,
    LogEntry,
    Recipe,
    Step,
    TemplateBuilds,
    TemplateError,
    run_program,
)
from ...tenancy.tenants import Tenant
from ..bodies import json_body
from ..context import Services
from ..errors import ApiError
from ..exchange import BodyTooLarge, ClientGone, Exchange

UPLOADS = "/templates/uploads/"
"""Where the SDK PUTs a COPY step's files (`/e2b` + this + a one-time token)."""
MAX_PAGE = 100


def template_builds(services: Services) -> TemplateBuilds:
    """The server's template builder: one per set of services (`Services.templates`), which
    the control plane's routes and the upload handler in front of the app share."""
    return services.templates


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _entry(entry: LogEntry) -> dict[str, Any]:
    found: dict[str, Any] = {
        "timestamp": _timestamp(entry.timestamp),
        "message": entry.message,
        "level": entry.level,
    }
    if entry.step is not None:
        found["step"] = entry.step
    return found


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, max_length=300)
    alias: str | None = Field(None, max_length=300)
    tags: list[str] = Field(default_factory=list, max_length=32)
    cpuCount: int | None = None
    memoryMB: int | None = None


class StepBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(max_length=32)
    args: list[str] = Field(default_factory=list, max_length=4096)
    filesHash: str | None = Field(None, max_length=128)
    force: bool | None = False


class BuildStart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    fromImage: str | None = Field(None, max_length=512)
    fromTemplate: str | None = Field(None, max_length=512)
    fromImageRegistry: dict[str, Any] | None = None
    force: bool | None = False
    steps: list[StepBody] = Field(default_factory=list, max_length=1000)
    startCmd: str | None = None
    readyCmd: str | None = None


class AssignTags(BaseModel):
    model_config = ConfigDict(extra="ignore")
    target: str = Field(max_length=300)
    tags: list[str] = Field(min_length=1, max_length=32)


class RemoveTags(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=300)
    tags: list[str] = Field(min_length=1, max_length=32)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


def install_template_routes(
    bp: Blueprint, services: Services, tenant: Callable[[], Tenant]
) -> None:
    """Add the builder's routes to the E2B control plane's blueprint (before its catch-all).
    The builder is looked up per request: making the blueprint starts nothing."""

    def builds() -> TemplateBuilds:
        return template_builds(services)

    @bp.errorhandler(TemplateError)
    async def _template_error(exc: TemplateError) -> Response:
        return _json({"code": exc.status, "message": str(exc)}, exc.status)

    @bp.post("/v3/templates")
    async def request_build() -> Response:
        owner = tenant()
        body = await json_body(BuildRequest)
        name = body.name or body.alias
        if not name:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "a template needs a name")
        build = await builds().request(owner, name, body.tags)
        return _json(
            {
                "templateID": build.template_id,
                "buildID": build.build_id,
                "public": False,
                "names": [build.alias],
                "aliases": [build.alias],
                "tags": list(build.tags),
            },
            202,
        )

    @bp.get("/templates/<template>/files/<files_hash>")
    async def file_link(template: str, files_hash: str) -> Response:
        present, token = builds().upload_link(tenant(), template, files_hash)
        url = f"{services.public_base(request)}/e2b{UPLOADS}{token}"
        return _json({"present": present, "url": url}, 201)

    @bp.post("/v2/templates/<template>/builds/<build_id>")
    async def start_build(template: str, build_id: str) -> tuple[str, int]:
        owner = tenant()
        body = await json_body(BuildStart)
        recipe = Recipe(
            steps=tuple(
                Step(s.type, tuple(s.args), s.filesHash, bool(s.force)) for s in body.steps
            ),
            from_image=body.fromImage,
            from_template=body.fromTemplate,
            registry=body.fromImageRegistry is not None,
            start_cmd=body.startCmd,
            ready_cmd=body.readyCmd,
            force=bool(body.force),
        )
        await builds().start(owner, template, build_id, recipe, services.background.start)
        return "", 202

    def status_of(build: Build, offset: int, limit: int) -> dict[str, Any]:
        entries = build.entries[offset : offset + limit]
        found: dict[str, Any] = {
            "templateID": build.template_id,
            "buildID": build.build_id,
            "status": build.status,
            "logEntries": [_entry(e) for e in entries],
            "logs": [],
        }
        if build.reason is not None:
            reason: dict[str, Any] = {"message": build.reason}
            if build.failed_step is not None:
                reason["step"] = build.failed_step
            found["reason"] = reason
        return found

    def number(name: str, default: int, most: int) -> int:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit():
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"{name} is a number")
        return min(int(raw), most)

    @bp.get("/templates/<template>/builds/<build_id>/status")
    async def build_status(template: str, build_id: str) -> Response:
        build = builds().build_of(tenant(), template, build_id)
        offset = number("logsOffset", 0, 1 << 30)
        return _json(status_of(build, offset, number("limit", MAX_PAGE, MAX_PAGE)))

    @bp.get("/templates/<template>/builds/<build_id>/logs")
    async def build_logs(template: str, build_id: str) -> Response:
        build = builds().build_of(tenant(), template, build_id)
        offset = number("cursor", 0, 1 << 30)
        entries = build.entries[offset : offset + number("limit", MAX_PAGE, MAX_PAGE)]
        return _json({"logs": [_entry(e) for e in entries]})

    @bp.get("/templates/aliases/<alias>")
    async def alias(alias: str) -> Response:
        """Whether the tenant has a template of this name: another tenant's is not found (E2B
        answers 403 for a public name someone else holds; Insien has no public templates)."""
        template_id = await builds().exists(tenant(), alias)
        if template_id is not None:
            return _json({"templateID": template_id, "public": False})
        if builds().operator_template(alias) is not None:  # the operator's, everyone's
            return _json({"templateID": alias.partition(":")[0], "public": True})
        return _json({"code": 404, "message": f"template {alias!r} not found"}, 404)

    @bp.get("/templates/<template>/tags")
    async def tags(template: str) -> Response:
        found = await builds().tags(tenant(), template)
        return _json(
            [
                {"tag": t.tag, "buildID": t.build_id, "createdAt": _timestamp(t.created_at)}
                for t in found
            ]
        )

    @bp.post("/templates/tags")
    async def assign_tags() -> Response:
        owner = tenant()
        body = await json_body(AssignTags)
        build_id = await builds().assign_tags(owner, body.target, body.tags)
        return _json({"tags": body.tags, "buildID": build_id}, 201)

    @bp.delete("/templates/tags")
    async def remove_tags() -> tuple[str, int]:
        owner = tenant()
        body = await json_body(RemoveTags)
        await builds().remove_tags(owner, body.name, body.tags)
        return "", 204


async def serve_upload(services: Services, exchange: Exchange, token: str) -> None:
    """`PUT <upload url>`: a COPY step's files, streamed to disk (the link is the credential:
    one use, an hour, made for the tenant who asked for it)."""
    if exchange.method != "PUT":
        await exchange.respond_json(405, {"code": 405, "message": "uploads are PUT"})
        return
    try:
        await template_builds(services).receive_upload(token, exchange.chunks())
    except TemplateError as exc:
        if not exchange.body_done:
            await exchange.discard_body()
        await exchange.respond_json(exc.status, {"code": exc.status, "message": str(exc)})
        return
    except (BodyTooLarge, ClientGone):
        return
    await exchange.respond_json(200, {})


async def start_template(services: Services, sandbox: Sandbox, owner: Tenant, image: str) -> None:
    """Run a template's start command and wait for its ready command before the sandbox is
    handed over (E2B's `set_start_cmd`); a sandbox that never gets ready is removed."""
    program = await template_builds(services).program_of(owner, image)
    if program is None:
        return
    admission = services.gate.for_tenant(sandbox.id, owner)
    left = (sandbox.expires_at - datetime.now(UTC)).total_seconds()
    try:
        # never waited for past the sandbox's own end
        await run_program(admission.link, program, max(1.0, min(left, READY_SECONDS)))
    except TemplateError:
        await services.manager.destroy(sandbox.id, owner)
        raise
