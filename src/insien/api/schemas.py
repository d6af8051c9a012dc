"""The REST API's bodies and answers as pydantic models: the routes validate what they receive
and build what they answer with these, and `GET /openapi.json` is generated from them.

Answers forbid extra fields, so the document is the whole truth about each answer (the OpenAPI
test validates live answers against it). Field names are the wire's own camelCase.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..protocol import ErrorCode
from ..sandboxes.sandbox import State
from ..sandboxes.volumes import MAX_MOUNTS
from .creating import Label, ResourcesRequest, Seconds, VolumeMountRequest

# -- what clients send ------------------------------------------------------------------------


class CreateRequest(BaseModel):
    """The body of `POST /sandbox/create`; every field is optional, unknown ones refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    template: StrictStr | None = Field(None, description="An image the operator allows.")
    timeout: Seconds | None = Field(None, description="Lifetime in seconds.")
    idleTimeout: Seconds | None = Field(None, description="Seconds it may go unused.")
    metadata: Annotated[dict[Label, StrictStr], Field(max_length=64)] = {}
    env: Annotated[dict[Label, StrictStr], Field(max_length=256)] = {}
    resources: ResourcesRequest | None = None
    network: NetworkRequest | None = None
    volumes: Annotated[list[VolumeMountRequest], Field(max_length=MAX_MOUNTS)] = Field(
        default_factory=list,
        description="Your volumes to mount: `{name, path, readOnly}` (see `POST /volumes`).",
    )


Rule = Annotated[StrictStr, Field(min_length=1, max_length=300)]


class NetworkRequest(BaseModel):
    """A sandbox's network policy (E2B's names): where it may connect out, and who may reach
    its ports. Rules: `example.org`, `*.example.com`, `10.0.0.0/8`, `2001:db8::1`, `public`,
    `*`, each optionally with `:port`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    allowOut: Annotated[list[Rule], Field(max_length=256)] = Field(
        default_factory=list, description="Where it may connect; empty: nowhere (no proxy)."
    )
    denyOut: Annotated[list[Rule], Field(max_length=256)] = Field(
        default_factory=list, description="Where it may not, whatever allowOut says."
    )
    allowPublicTraffic: StrictBool = Field(
        False, description="Its ports answer anyone, with no key or preview token."
    )
    secrets: Annotated[list[SecretBindingRequest], Field(max_length=32)] = Field(
        default_factory=list,
        description="Secrets the egress proxy adds to requests for some hosts (the sandbox "
        "sees only placeholders, `INSIEN_SECRET_<NAME>`).",
    )


SecretName = Annotated[
    StrictStr, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$", description="Letters, digits, _.")
]
SecretValue = Annotated[
    StrictStr,
    Field(min_length=1, max_length=8192, description="One line; never shown again."),
]


class SecretBindingRequest(BaseModel):
    """A secret the egress proxy adds on the way out (issue 30): as a header from a template,
    and wherever its placeholder appears in a request head (or body, with `body`), only for
    `hosts` (exact, `*.domain`, one address; `:port` optional) and, if given, only these
    methods and path prefixes."""

    model_config = ConfigDict(extra="forbid", strict=True)
    secret: SecretName
    hosts: Annotated[list[Rule], Field(min_length=1, max_length=32)]
    header: Annotated[StrictStr, Field(max_length=1024)] | None = Field(
        None, description="`Name: template`, the template holding `{secret}`."
    )
    methods: Annotated[list[Annotated[StrictStr, Field(max_length=16)]], Field(max_length=16)] = []
    paths: Annotated[list[Annotated[StrictStr, Field(max_length=1024)]], Field(max_length=32)] = []
    body: StrictBool = Field(False, description="Swap placeholders in bodies up to 1 MiB too.")


class SecretCreateRequest(BaseModel):
    """The body of `POST /secrets`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: SecretName
    value: SecretValue
    description: Annotated[StrictStr, Field(max_length=1024)] = ""


class SecretRotateRequest(BaseModel):
    """The body of `PUT /secrets/<name>`: a new value, in effect from the next request on."""

    model_config = ConfigDict(extra="forbid", strict=True)
    value: SecretValue
    description: Annotated[StrictStr, Field(max_length=1024)] | None = None


class KeepaliveRequest(BaseModel):
    """The body of `POST /sandbox/<id>/keepalive`: a new lifetime from now, or its own."""

    model_config = ConfigDict(extra="forbid", strict=True)
    timeout: Seconds | None = None


MAX_PAGE = 200


class ListQuery(BaseModel):
    """The query of `GET /sandboxes`; `metadata.<name>=<value>` filters by a label too."""

    model_config = ConfigDict(extra="allow")
    state: State | None = None
    limit: Annotated[int, Field(ge=1, description=f"At most {MAX_PAGE} are given.")] = 50
    cursor: Annotated[int, Field(ge=0, description="`nextCursor` of the page before.")] = 0


class FileQuery(BaseModel):
    """The query of the file routes."""

    path: Annotated[str, Field(min_length=1, description="Relative to the home folder.")]


class PreviewUrlRequest(BaseModel):
    """The body of `POST /sandboxes/<id>/ports/<port>/url`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    expires: Annotated[StrictFloat, Field(gt=0, le=7 * 86400)] = Field(
        3600.0, description="Seconds the URL works for (at most a week)."
    )


# -- what the server answers ------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Answer):
    """Every failure: a code clients can branch on, and a message people can read. A 429
    carries `Retry-After` (seconds)."""

    code: ErrorCode
    message: str


class Health(Answer):
    status: Literal["ok"]
    pool: int = Field(description="Sandboxes ready in the warm pools.")


class Created(Answer):
    sandboxId: str
    agentUrl: str = Field(description="The sandbox's WebSocket, with a short-lived token.")


class Destroyed(Answer):
    success: Literal[True]
    sandboxId: str


class SeedStatus(Answer):
    sandboxId: str
    connected: bool
    createdAt: str


class ResourcesInfo(Answer):
    cpu: float
    memory: int = Field(description="Bytes.")
    pids: int


class SecretBindingInfo(Answer):
    secret: str
    hosts: list[str]
    placeholder: str = Field(description="What the sandbox finds in `INSIEN_SECRET_<NAME>`.")
    header: str | None = None
    methods: list[str]
    paths: list[str]
    body: bool


class NetworkPolicyInfo(Answer):
    allowOut: list[str]
    denyOut: list[str]
    allowPublicTraffic: bool
    secrets: list[SecretBindingInfo] | None = Field(
        None,
        description="Secret bindings; absent when there are none, so answers of policies "
        "without secrets keep their shape.",
        exclude_if=lambda value: value is None,
    )


class SecretInfo(Answer):
    """A secret as anyone may see it: never its value."""

    name: str
    description: str
    createdAt: str
    updatedAt: str
    version: int = Field(description="1, and one more at each rotation.")


class SecretList(Answer):
    secrets: list[SecretInfo]


class SecretDeleted(Answer):
    success: bool
    name: str


class EgressCountersInfo(Answer):
    connections: int = Field(description="Connections out made for it.")
    refused: int = Field(description="Connections out refused (by policy or limit).")
    bytesOut: int
    bytesIn: int
    secretsUsed: int = Field(0, description="Requests a secret was added to (per secret).")


class NetworkInfo(NetworkPolicyInfo):
    """A sandbox's network policy and what its egress has done since this server started."""

    sandboxId: str
    egress: EgressCountersInfo


class SandboxInfo(Answer):
    """Everything the service knows about a sandbox."""

    sandboxId: str
    state: State
    template: str
    createdAt: str
    expiresAt: str
    timeout: float
    idleTimeout: float | None
    metadata: dict[str, str]
    resources: ResourcesInfo
    network: NetworkPolicyInfo
    clients: int = Field(description="WebSockets connected now.")
    connected: bool
    endReason: str | None
    endedAt: str | None


class SandboxPage(Answer):
    sandboxes: list[SandboxInfo]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page.")


class MetricsPoint(Answer):
    """One sample of a sandbox's series."""

    timestamp: str
    cpuPercent: float
    memoryBytes: int
    pids: int
    diskBytes: int
    tmpBytes: int | None


class Metrics(Answer):
    """What a sandbox uses now (its cgroup), and a short recent series: each reading keeps the
    sandbox sampled every 5 s for a minute. Reading it is not activity."""

    sandboxId: str
    timestamp: str
    cpuCount: int
    cpuPercent: float = Field(description="Of its CPU limit, since the previous reading.")
    cpuSeconds: float = Field(description="CPU time used since it started.")
    memoryBytes: int = Field(description="Without the page cache.")
    memoryLimit: int
    memoryCache: int
    memoryPeak: int | None = Field(
        description="Its cgroup's high-water mark (page cache included), where the kernel "
        "keeps one; else the highest this server saw."
    )
    diskBytes: int = Field(description="Its writable layer.")
    diskLimit: int
    tmpBytes: int | None = Field(description="Used in /tmp (a tmpfs, counted in memory).")
    tmpLimit: int | None
    pids: int
    egressBytesOut: int = Field(description="Sent out through its egress proxy (this server).")
    egressBytesIn: int
    portBytesIn: int = Field(description="Sent into its ports (previews, forwards, this server).")
    portBytesOut: int
    series: list[MetricsPoint]


class LogLine(Answer):
    timestamp: str
    line: str


class Logs(Answer):
    """The agent's own log: its last 200 stderr lines."""

    sandboxId: str
    logs: list[LogLine]


class SnapshotMade(Answer):
    sandboxId: str
    template: str = Field(description="Create from it with `template`.")


class SnapshotInfo(Answer):
    template: str
    sandboxId: str | None
    createdAt: str
    bytes: int


class SnapshotList(Answer):
    snapshots: list[SnapshotInfo]


class SnapshotDeleted(Answer):
    success: Literal[True]
    template: str


class Killed(Answer):
    sandboxId: str
    killed: int = Field(description="Processes killed.")


class PreviewUrl(Answer):
    """A URL that opens one port of one sandbox over HTTP without a key, until it expires."""

    url: str
    token: str = Field(description="Also accepted as the `insien_port` cookie.")
    expiresAt: str


class Uploaded(Answer):
    success: Literal[True]
    path: str
    bytes: int


# -- volumes ------------------------------------------------------------------------------------


class VolumeCreateRequest(BaseModel):
    """The body of `POST /volumes`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: StrictStr = Field(description="1 to 63 letters, digits, `.`, `_`, `-`; yours alone.")
    sizeLimit: StrictInt | StrictStr | None = Field(
        None, description="Bytes, or `512m`, `2g`; default 1g. Counts against your plan."
    )


class VolumeFileQuery(BaseModel):
    """The query of a volume's file routes."""

    path: Annotated[str, Field(min_length=1, description="Inside the volume (`/` optional).")]


class VolumeDeleteQuery(BaseModel):
    """The query of `DELETE /volumes/<name>`."""

    force: bool = Field(False, description="Destroy the sandboxes that mount it first.")


class VolumeSummary(Answer):
    name: str
    sizeLimit: int = Field(description="Bytes.")
    createdAt: str


class VolumeDetail(VolumeSummary):
    """A volume with what it holds now and who mounts it."""

    bytesUsed: int = Field(description="What its files hold, measured now.")
    sandboxes: list[str] = Field(description="Sandboxes that mount it.")


class VolumeList(Answer):
    volumes: list[VolumeSummary]


class VolumeDeleted(Answer):
    success: Literal[True]
    name: str


class VolumeEntry(Answer):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float


class VolumeEntries(Answer):
    path: str
    entries: list[VolumeEntry]
    truncated: bool = Field(description="Only the first 10000 entries are given.")


class VolumeWritten(Answer):
    success: Literal[True]
    path: str
    bytes: int = Field(description="What was written, as the volume holds it.")
    sha256: str = Field(description="SHA-256 of what was written, as the volume holds it.")


class VolumeFileDone(Answer):
    success: Literal[True]
    path: str
