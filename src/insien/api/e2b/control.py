"""The control plane of the E2B front (`E2B_API_URL=http://<host>:<port>/e2b`): E2B's REST
routes for sandboxes, translated to the same core calls Insien's own routes make, with E2B's
bodies and error shape (`{"code": <status>, "message"}`).

Long because E2B's control plane is one blueprint of routes that share its translation helpers;
secrets, volumes, templates, rules and connect are modules of their own. Next seam: the routes
out of the blueprint factory (issue 28, item 7).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request

from ...egress import NetworkPolicy, RuleError
from ...protocol import ErrorCode
from ...sandboxes.access import Surface
from ...sandboxes.sandbox import Sandbox, State, iso_timestamp
from ...sandboxes.snapshots import (
    SNAPSHOT_REPOSITORY,
    BadSnapshotName,
    KeptSnapshot,
    snapshot_name,
)
from ...tenancy.auth import Audience
from ...tenancy.tenants import Tenant
from ..bodies import json_body
from ..context import Services
from ..creating import VolumeMountRequest, sandbox_options
from ..errors import CORE_ERRORS, ApiError, api_error_for
from ..secrets import bindings_checked, secret_store_of
from .rules import RulesError, bindings_for, rules_of
from .secrets import install_secret_routes, named
from .templates import install_template_routes, start_template, template_builds
from .volumes import install_volume_routes

ENVD_VERSION = "0.6.4"
"""The envd version the SDKs are told: its features (stdin, close-stdin, octet-stream uploads,
recursive watches) are served; file metadata (0.6.2) and the newer watch options are not."""
DEFAULT_TIMEOUT = 300
CLIENT_ID = "insien"
MAX_PAGE = 1000
MAX_FORKS = 16
MIB = 1024 * 1024


class E2BNetwork(BaseModel):
    """E2B's network options on create and in `PUT /sandboxes/{id}/network`."""

    model_config = ConfigDict(extra="ignore")
    allowOut: list[str] = Field(default_factory=list, max_length=256)
    denyOut: list[str] = Field(default_factory=list, max_length=256)
    allowPublicTraffic: bool | None = None
    allowInternetAccess: bool | None = None
    """Only in the update body (the create body has it at the top level)."""
    rules: dict[str, Any] | None = None
    """Header transforms per host, a value naming a secret (`${e2b.secrets.<name>}`)."""
    egressProxy: dict[str, Any] | None = None
    maskRequestHost: str | None = Field(None, min_length=1, max_length=253)
    """The Host a port's program is told, `${PORT}` replaced (create only)."""


ALL_TRAFFIC = ("0.0.0.0/0", "::/0")


def e2b_policy(
    network: E2BNetwork | None,
    internet: bool | None,
    bindings: Sequence[Mapping[str, Any]] = (),
    keep: Mapping[str, str] | None = None,
) -> NetworkPolicy:
    """E2B's network options as Insien's policy. E2B allows everything unless told not to,
    and its `allowOut` entries are exceptions to `denyOut`: with internet off (or
    `denyOut: ["0.0.0.0/0"]`) only `allowOut` is reachable; with it on, everything within the
    operator's ceiling except `denyOut` (where Insien's deny wins over an allow). `bindings`:
    its `rules` as Insien's secret bindings (`rules.bindings_for`), which grant no access
    (as E2B's rules do not); `keep`: the placeholders the sandbox's secrets already have."""
    network = network or E2BNetwork()
    if network.egressProxy:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "egressProxy is not supported by Insien")
    if internet is None:
        internet = network.allowInternetAccess
    blocked = internet is False or any(rule in ALL_TRAFFIC for rule in network.denyOut)
    deny = [rule for rule in network.denyOut if rule not in ALL_TRAFFIC]
    allow = network.allowOut if blocked else ["*"]
    try:
        return NetworkPolicy.of(
            allow, deny, network.allowPublicTraffic is not False, bindings, keep
        )
    except RuleError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"network: {exc}") from None


class AutoResume(BaseModel):
    model_config = ConfigDict(extra="ignore")
    enabled: bool = False


class PauseBody(BaseModel):
    """E2B's pause: `memory: false` keeps only the filesystem (a resume boots it anew)."""

    model_config = ConfigDict(extra="ignore")
    memory: bool = True


MASKED_HOST = re.compile(r"[A-Za-z0-9.:_\[\]${}-]+")
"""What a `maskRequestHost` may hold: a host (and port), with `${PORT}` in it."""


class NewSandbox(BaseModel):
    """E2B's create body (v1 and v2). What Insien cannot honour is refused when asked for."""

    model_config = ConfigDict(extra="ignore")
    templateID: str = Field("base", min_length=1, max_length=512)
    timeout: int = Field(DEFAULT_TIMEOUT, ge=1)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    envVars: dict[str, str] = Field(default_factory=dict, max_length=256)
    autoPause: bool = False
    autoPauseMemory: bool = True
    autoResume: AutoResume | None = None
    secure: bool = True
    allow_internet_access: bool | None = None
    network: E2BNetwork | None = None
    mcp: dict[str, Any] | None = None
    iam: dict[str, Any] | None = None
    """Workload identity (tokens a transform may name): not offered."""
    volumeMounts: list[E2BVolumeMount] | None = Field(None, max_length=16)


class E2BVolumeMount(BaseModel):
    """E2B's `SandboxVolumeMount`: one of the caller's volumes (by name) at a path, read-write."""

    model_config = ConfigDict(extra="ignore")
    name: str
    path: str


class TimeoutBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int = Field(ge=0)


class ConnectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int | None = Field(None, ge=0)
    memory: bool | None = None
    """False: boot the paused sandbox anew on its files (E2B's `on_resume="reboot"`)."""


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int | None = Field(None, ge=1)
    count: int = Field(1, ge=1, le=MAX_FORKS)


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, max_length=300)


def snapshot_info(snap: KeptSnapshot) -> dict[str, Any]:
    """A snapshot as E2B's `SnapshotInfo`: named by its name when it has one."""
    snapshot_id = snap.name or snap.template
    return {"snapshotID": snapshot_id, "names": [snapshot_id]}


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    duration: int | None = Field(None, ge=0)


def e2b_error(status: int, message: str, retry_after: int | None = None) -> Response:
    response = Response(
        json.dumps({"code": status, "message": message}), status=status, mimetype="application/json"
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """`metadata=k%3Dv%26k2%3Dv2`: the SDKs urlencode the filter, with keys and values quoted."""
    if not raw:
        return {}
    return {unquote(k): unquote(v) for k, v in parse_qsl(raw, keep_blank_values=True)}


def _moment(raw: str | None, name: str) -> datetime | None:
    """An ISO 8601 time from a query (`+00:00` may arrive as ` 00:00`); naive means UTC."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"{name} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _unix(raw: str | None, name: str) -> int | None:
    """A time in Unix seconds from a query, as E2B's metrics take `start` and `end`."""
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"{name} is in Unix seconds") from None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _list_key(sandbox: Sandbox) -> tuple[int, str]:
    """Where a sandbox sits in E2B's list: its start time (whole microseconds), then id."""
    return (sandbox.created_at - EPOCH) // timedelta(microseconds=1), sandbox.id


def _token(sandbox: Sandbox) -> str:
    """The list cursor after `sandbox`."""
    micros, sandbox_id = _list_key(sandbox)
    return f"{micros}.{sandbox_id}"


def _cursor(raw: str | None) -> tuple[int, str] | None:
    """A `nextToken` back as the list key it was taken after."""
    if not raw:
        return None
    micros, _, sandbox_id = raw.partition(".")
    if not micros.isdigit() or not sandbox_id:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "nextToken is not one this server gave")
    return int(micros), sandbox_id


def control_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("e2b", __name__, url_prefix="/e2b")
    manager = services.manager
    settings = services.settings

    @bp.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return e2b_error(exc.status, exc.message, exc.retry_after)

    for kind in CORE_ERRORS:

        @bp.errorhandler(kind)
        async def _core_error(exc: Exception) -> Response:
            error = api_error_for(exc)
            return e2b_error(error.status, error.message, error.retry_after)

    def tenant() -> Tenant:
        found = services.auth.tenant_for_key(request.headers.get("X-API-Key"))
        if found is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "Invalid API key")
        return found

    async def policy(
        owner: Tenant,
        network: E2BNetwork | None,
        internet: bool | None,
        keep: Mapping[str, str] | None = None,
    ) -> NetworkPolicy:
        """E2B's network options, `rules` included, as the tenant's policy: a rule may name
        only the tenant's own secrets (another's is not found, as if it did not exist)."""
        bindings: list[dict[str, Any]] = []
        if network is not None and network.rules:
            owned = await secret_store_of(services).list(owner.id)

            def resolve(ref: str) -> str | None:
                found = named(owned, ref)
                return found.name if found else None

            try:
                bindings = bindings_for(network.rules, resolve)
            except RulesError as exc:
                raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        wanted = e2b_policy(network, internet, bindings, keep)
        return await bindings_checked(services, owner, wanted)

    def template_image(name: str) -> str:
        if name == "base":
            return settings.agent_image
        aliased = settings.e2b_templates.get(name)
        if aliased is not None:
            return aliased
        if name.startswith("code-interpreter"):
            return settings.interpreter_image  # `insien image build --interpreter`
        return name

    async def image_for(name: str, owner: Tenant) -> str:
        """The image a create names: the operator's templates first, then a template the
        tenant built or a snapshot of its by their name (`Sandbox.create("my-snapshot")`),
        else the name itself."""
        image = template_image(name)
        if (
            image == name
            and image not in settings.allowed_templates
            and not image.startswith(f"{SNAPSHOT_REPOSITORY}:")
        ):
            built = await template_builds(services).image_for(owner, name)
            return built or await manager.snapshots.named(owner, name) or image
        return image

    async def available(image: str, name: str) -> str:
        """The interpreter's image, checked before a create names it: missing, it is the
        operator's step to take, said plainly."""
        if image == settings.interpreter_image and not await manager.launcher.image_present(image):
            raise ApiError(
                400,
                ErrorCode.BAD_REQUEST,
                f"template {name!r} needs the code interpreter image {image}: build it with"
                " `insien image build --interpreter`",
            )
        return image

    def template_name(sandbox: Sandbox) -> str:
        image = sandbox.options.template
        if image == settings.agent_image:
            return "base"
        if image == settings.interpreter_image:
            return "code-interpreter-v1"
        for alias, target in settings.e2b_templates.items():
            if target == image:
                return alias
        return image

    def access_token(sandbox: Sandbox, owner: Tenant, audience: Audience) -> str:
        # envd calls use this token for as long as the sandbox may live, not the short
        # lifetime of an agentUrl token.
        remaining = (sandbox.expires_at - datetime.now(UTC)).total_seconds()
        ttl = max(remaining, 0) + 3600
        return services.auth.issue_token(sandbox.id, owner, ttl=ttl, audience=audience)

    def created(sandbox: Sandbox, owner: Tenant) -> dict[str, Any]:
        envd_token = access_token(sandbox, owner, Audience.CONTROL)
        services.envd_tokens.record(sandbox.id, envd_token)  # what signed URLs are signed with
        return {
            "templateID": template_name(sandbox),
            "sandboxID": sandbox.id,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": envd_token,
            # One purpose each: the traffic token opens the user's ports, never envd.
            "trafficAccessToken": access_token(sandbox, owner, Audience.TRAFFIC),
            "domain": None,
        }

    def state(sandbox: Sandbox) -> str:
        return "paused" if sandbox.state is State.PAUSED else "running"

    def lifecycle(body: NewSandbox) -> dict[str, Any]:
        """E2B's lifecycle options as Insien's: what the timeout does (`autoPause`, and with
        `autoPauseMemory` false a stop that keeps the files only) and `autoResume`."""
        resume = body.autoResume is not None and body.autoResume.enabled
        if resume and not body.autoPause:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "autoResume needs autoPause")
        if resume and not body.autoPauseMemory:
            raise ApiError(
                400,
                ErrorCode.BAD_REQUEST,
                "autoResume cannot be combined with autoPauseMemory false: a sandbox paused"
                " without its memory is resumed by connect only",
            )
        on_expiry = "end"
        if body.autoPause:
            on_expiry = "pause" if body.autoPauseMemory else "stop"
        mask = body.network.maskRequestHost if body.network else None
        if mask is not None and not MASKED_HOST.fullmatch(mask):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "maskRequestHost is a host name")
        return {"on_expiry": on_expiry, "auto_resume": resume, "mask_request_host": mask}

    def described(sandbox: Sandbox) -> dict[str, Any]:
        """What `GET /sandboxes/{id}` adds to the listing: lifecycle and ingress options."""
        options = sandbox.options
        network: dict[str, Any] = {
            "allowPublicTraffic": options.network_policy.allow_public_traffic
        }
        rules = rules_of(options.network_policy)
        if rules:
            network["rules"] = rules
        if options.mask_request_host is not None:
            network["maskRequestHost"] = options.mask_request_host
        return {
            "lifecycle": {
                "onTimeout": "kill" if options.on_expiry == "end" else "pause",
                "autoResume": options.auto_resume,
            },
            "network": network,
        }

    def listed(sandbox: Sandbox) -> dict[str, Any]:
        resources = sandbox.options.resources
        return {
            "templateID": template_name(sandbox),
            "sandboxID": sandbox.id,
            "clientID": CLIENT_ID,
            "startedAt": iso_timestamp(sandbox.created_at),
            "endAt": iso_timestamp(sandbox.expires_at),
            "cpuCount": max(1, math.ceil(resources.cpus)),
            "memoryMB": resources.memory // MIB,
            "diskSizeMB": 0,
            "state": state(sandbox),
            "envdVersion": ENVD_VERSION,
            "metadata": dict(sandbox.options.metadata),
        }

    async def create() -> tuple[dict[str, Any], int]:
        owner = tenant()
        body = await json_body(NewSandbox)
        if body.mcp:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "MCP gateways are not supported by Insien")
        if body.iam and body.iam.get("tokens"):
            raise ApiError(
                400, ErrorCode.BAD_REQUEST, "workload identity tokens are not supported by Insien"
            )
        network = await policy(owner, body.network, body.allow_internet_access)
        image = await available(await image_for(body.templateID, owner), body.templateID)
        options = await sandbox_options(
            services,
            owner,
            template=image,
            lifetime=float(body.timeout),
            idle_timeout=None,
            metadata=body.metadata,
            env={**await template_builds(services).env_for(owner, image), **body.envVars},
            no_idle_timeout=True,
            network=network,
            volumes=[VolumeMountRequest(name=m.name, path=m.path) for m in body.volumeMounts or ()],
        )
        options = replace(options, **lifecycle(body))
        sandbox = await manager.create(owner, options)
        await start_template(services, sandbox, owner, image)
        return created(sandbox, owner), 201

    bp.add_url_rule("/sandboxes", "create", create, methods=["POST"])
    bp.add_url_rule("/v2/sandboxes", "create_v2", create, methods=["POST"])

    def matches_template(sandbox: Sandbox, wanted: str) -> bool:
        """E2B's `template` filter: a template's ID or alias (here: its E2B name or image)."""
        return wanted in (template_name(sandbox), sandbox.options.template)

    async def list_sandboxes() -> Response:
        """E2B's list: newest first unless `order=asc`, filtered by state, metadata, start
        time and template; `nextToken` is a cursor (the last start time and id seen), so
        a sandbox created or ended while someone pages neither repeats nor hides another."""
        owner = tenant()
        args = request.args
        wanted = _metadata_filter(args.get("metadata"))
        states = {s for s in args.get("state", "running,paused").split(",") if s}
        unknown = states - {"running", "paused"}
        if unknown:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown state {sorted(unknown)}")
        order = args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "order is 'asc' or 'desc'")
        started_after = _moment(args.get("startedAfter"), "startedAfter")
        template = args.get("template")
        try:
            limit = min(int(args.get("limit", "100")), MAX_PAGE)
        except ValueError:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit is an integer") from None
        if limit < 1:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "limit must be >= 1")
        after = _cursor(args.get("nextToken"))
        found = [
            s
            for s in manager.list(owner, include_ended=False)
            if state(s) in states
            and all(s.options.metadata.get(k) == v for k, v in wanted.items())
            and (started_after is None or s.created_at >= started_after)
            and (not template or matches_template(s, template))
        ]
        newest_first = order == "desc"
        if newest_first:
            found.reverse()
        if after is not None:
            found = [
                s for s in found if (_list_key(s) < after if newest_first else _list_key(s) > after)
            ]
        page = found[:limit]
        response = Response(
            json.dumps([listed(s) for s in page]), status=200, mimetype="application/json"
        )
        if len(found) > limit:
            response.headers["x-next-token"] = _token(page[-1])
        return response

    bp.add_url_rule("/sandboxes", "list", list_sandboxes, methods=["GET"])
    bp.add_url_rule("/v2/sandboxes", "list_v2", list_sandboxes, methods=["GET"])

    @bp.get("/sandboxes/<sandbox_id>")
    async def detail(sandbox_id: str) -> dict[str, Any]:
        sandbox = manager.get(sandbox_id, tenant())
        return {**listed(sandbox), **described(sandbox), "envdAccessToken": None, "domain": None}

    @bp.delete("/sandboxes/<sandbox_id>")
    async def kill(sandbox_id: str) -> tuple[str, int]:
        await manager.destroy(sandbox_id, tenant())
        return "", 204

    @bp.put("/sandboxes/<sandbox_id>/network")
    async def update_network(sandbox_id: str) -> tuple[str, int]:
        owner = tenant()
        body = await json_body(E2BNetwork)
        now = manager.get(sandbox_id, owner).options.network_policy
        wanted = await policy(owner, body, None, now.placeholders())
        await manager.update_network(
            sandbox_id, owner, replace(wanted, allow_public_traffic=now.allow_public_traffic)
        )
        return "", 204

    @bp.post("/sandboxes/<sandbox_id>/timeout")
    async def set_timeout(sandbox_id: str) -> tuple[str, int]:
        body = await json_body(TimeoutBody)
        manager.keepalive(sandbox_id, tenant(), float(max(body.timeout, 1)))
        return "", 204

    @bp.post("/sandboxes/<sandbox_id>/refreshes")
    async def refresh(sandbox_id: str) -> tuple[str, int]:
        body = await json_body(RefreshBody)
        manager.keepalive(sandbox_id, tenant(), float(body.duration) if body.duration else None)
        return "", 204

    @bp.post("/sandboxes/<sandbox_id>/pause")
    async def pause(sandbox_id: str) -> Any:
        owner = tenant()
        body = await json_body(PauseBody)
        if manager.get(sandbox_id, owner).state is State.PAUSED:
            return e2b_error(409, f"sandbox {sandbox_id} is already paused")
        await manager.pause(sandbox_id, owner, memory=body.memory)
        return "", 204

    async def connect(sandbox_id: str) -> tuple[dict[str, Any], int]:
        owner = tenant()
        body = await json_body(ConnectBody)
        sandbox = manager.get(sandbox_id, owner)
        status = 200
        if sandbox.state is State.PAUSED:
            await manager.resume(sandbox_id, owner, memory=body.memory is not False)
            status = 201
        if status == 201:
            # a resumed sandbox gets a lifetime again (its own timeout unless one is given)
            manager.keepalive(sandbox_id, owner, float(body.timeout) if body.timeout else None)
        elif body.timeout:
            # as E2B: connecting to a running sandbox only ever extends its life, never shortens
            wanted = datetime.now(UTC) + timedelta(seconds=body.timeout)
            if wanted > sandbox.expires_at:
                manager.keepalive(sandbox_id, owner, float(body.timeout))
        return created(sandbox, owner), status

    bp.add_url_rule("/sandboxes/<sandbox_id>/connect", "connect", connect, methods=["POST"])
    bp.add_url_rule("/v2/sandboxes/<sandbox_id>/connect", "connect_v2", connect, methods=["POST"])
    bp.add_url_rule("/sandboxes/<sandbox_id>/resume", "resume", connect, methods=["POST"])

    @bp.get("/sandboxes/<sandbox_id>/metrics")
    async def metrics(sandbox_id: str) -> Response:
        """E2B's metrics: the readings taken every 5 s between `start` and `end` (Unix
        seconds; the sandbox's start and now by default). A sandbox is sampled from the first
        time anyone asks (sandboxes/usage.py says why not before)."""
        sandbox = manager.get(sandbox_id, tenant())
        start = _unix(request.args.get("start"), "start")
        end = _unix(request.args.get("end"), "end")
        if start is None:
            start = int(sandbox.created_at.timestamp())
        series = [
            {
                "timestamp": datetime.fromtimestamp(r.at, UTC).isoformat().replace("+00:00", "Z"),
                "timestampUnix": int(r.at),
                "cpuCount": r.cpu_count,
                "cpuUsedPct": r.cpu_percent,
                "memUsed": r.memory_bytes,
                "memTotal": r.memory_limit,
                "memCache": r.memory_cache,
                "diskUsed": r.disk_bytes,
                "diskTotal": r.disk_limit,
            }
            for r in await manager.usage.history(sandbox, start, end)
        ]
        return Response(json.dumps(series), status=200, mimetype="application/json")

    async def logs(sandbox_id: str) -> dict[str, Any]:
        record = services.gate.for_tenant(sandbox_id, tenant(), Surface.RECORD, include_ended=True)
        lines = record.link.stderr.recent()
        return {
            "logs": [{"timestamp": at, "line": line} for at, line in lines],
            "logEntries": [
                {"timestamp": at, "message": line, "level": "info", "fields": {}}
                for at, line in lines
            ],
        }

    bp.add_url_rule("/sandboxes/<sandbox_id>/logs", "logs", logs, methods=["GET"])
    bp.add_url_rule("/v2/sandboxes/<sandbox_id>/logs", "logs_v2", logs, methods=["GET"])

    @bp.post("/sandboxes/<sandbox_id>/snapshots")
    async def snapshot(sandbox_id: str) -> tuple[dict[str, Any], int]:
        """A snapshot is an Insien snapshot template: create from it with its `snapshotID`
        (its name, `alias:tag`, when it was given one; the name moves to the newest)."""
        owner = tenant()
        body = await json_body(SnapshotBody)
        if body.name is not None:
            try:
                snapshot_name(body.name)
            except BadSnapshotName as exc:
                raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        template = await manager.snapshot(sandbox_id, owner, body.name)
        found = [s for s in await manager.snapshots.entries(owner) if s.template == template]
        if not found:  # deleted by now, which is the tenant's own doing
            return {"snapshotID": template, "names": [template]}, 201
        return snapshot_info(found[0]), 201

    @bp.get("/snapshots")
    async def snapshots() -> Response:
        owner = tenant()
        source = request.args.get("sandboxID")
        name = request.args.get("name")
        built = await template_builds(services).image_names(
            owner
        )  # templates are not snapshots on E2B
        found = [
            snapshot_info(snap)
            for snap in await manager.snapshots.entries(owner)
            if (source is None or snap.sandbox_id == source)
            and (not name or snap.matches(name))
            and snap.template not in built
        ]
        return Response(json.dumps(found), status=200, mimetype="application/json")

    @bp.delete("/templates/<path:template>")
    async def delete_snapshot(template: str) -> tuple[str, int]:
        owner = tenant()
        if await template_builds(services).delete(owner, template):
            return "", 204
        if not template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            template = await manager.snapshots.named(owner, template) or template
        await manager.snapshots.delete(owner, template)
        return "", 204

    @bp.post("/sandboxes/<sandbox_id>/fork")
    async def fork(sandbox_id: str) -> tuple[Response, int]:
        """Copies of a sandbox's files: a snapshot (kept, as the tenant's; delete it with
        `DELETE /templates/<snapshotID>`), then `count` sandboxes from it, made at once."""
        owner = tenant()
        body = await json_body(ForkBody)
        source = manager.get(sandbox_id, owner)
        template = await manager.snapshot(sandbox_id, owner)
        options = await sandbox_options(
            services,
            owner,
            template=template,
            lifetime=float(body.timeout or DEFAULT_TIMEOUT),
            idle_timeout=None,
            metadata=source.options.metadata,
            env=source.options.env,
            no_idle_timeout=True,
        )
        options = replace(options, resources=source.options.resources)
        results: list[dict[str, Any]] = [{} for _ in range(body.count)]

        async def one(index: int) -> None:
            try:
                results[index] = {"sandbox": created(await manager.create(owner, options), owner)}
            except CORE_ERRORS as exc:
                error = api_error_for(exc)
                results[index] = {"error": {"code": error.status, "message": error.message}}

        async with trio.open_nursery() as nursery:
            for index in range(body.count):
                nursery.start_soon(one, index)
        return Response(json.dumps(results), mimetype="application/json"), 201

    install_template_routes(bp, services, tenant)
    install_secret_routes(bp, services, tenant)
    install_volume_routes(bp, services, tenant)

    @bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unsupported(rest: str) -> Response:
        tenant()
        return e2b_error(
            501,
            f"{request.method} /{rest} is not supported by Insien's E2B front"
            " (see docs/e2b.md for what is)",
        )

    return bp
