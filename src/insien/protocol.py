"""The RPC protocol: error codes and the client messages, defined once for the whole server.

The same shapes travel on the client WebSocket and on the agent's stdio. The server validates
what clients send before it reaches an agent; the agent validates again on its side.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

PROTOCOL_VERSION = 1


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    IS_A_DIRECTORY = "IS_A_DIRECTORY"
    NOT_A_DIRECTORY = "NOT_A_DIRECTORY"
    TOO_LARGE = "TOO_LARGE"
    BAD_ENCODING = "BAD_ENCODING"
    BUSY = "BUSY"
    AGENT_GONE = "AGENT_GONE"
    INTERNAL = "INTERNAL"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    NOT_EMPTY = "NOT_EMPTY"
    CANCELLED = "CANCELLED"
    # REST-only
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_READY = "NOT_READY"
    UNAVAILABLE = "UNAVAILABLE"
    NOT_SUPPORTED = "NOT_SUPPORTED"
    """The server's runtime cannot do this at all (Kubernetes: pause, snapshots)."""
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    CONNECTION_REFUSED = "CONNECTION_REFUSED"
    CONTEXT_DIED = "CONTEXT_DIED"
    """A code context's process is gone (OOM, os._exit, killed): restart it."""


RequestId = StrictStr | StrictInt
Message = dict[str, Any]


def error_message(request_id: RequestId | None, code: ErrorCode, message: str) -> Message:
    return {"id": request_id, "type": "error", "code": str(code), "message": message}


class _Request(BaseModel):
    # Unknown extra fields pass through to the agent, so newer clients can talk to older servers.
    model_config = ConfigDict(extra="allow", strict=True)
    id: RequestId


def refuse_nul(value: str) -> str:
    """A validator for what becomes a command line, a path or an environment variable: the
    operating system cannot take a NUL byte there, and the agent's spawner would stall on it."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return value


NUL_FREE = AfterValidator(refuse_nul)
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
OsText = Annotated[StrictStr, NUL_FREE]
"""A string handed to the operating system (argv, cwd, environment): no NUL bytes."""
OsEnv = dict[OsText, OsText]
Encoding = Literal["utf-8", "base64"]
Pid = Annotated[StrictInt, Field(ge=1)]
Seconds = Annotated[StrictInt | StrictFloat, Field(gt=0)]
Size = Annotated[StrictInt, Field(ge=1, le=10_000)]


class PtySize(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    cols: Size = 80
    rows: Size = 24


class _CommandRequest(_Request):
    binary: StrictBool = False
    """Output as binary WebSocket messages (raw bytes) instead of `output` events."""
    cmd: Annotated[StrictStr, Field(min_length=1), NUL_FREE]
    args: list[OsText] = []
    cwd: OsText | None = None
    env: OsEnv | None = None
    encoding: Encoding = "utf-8"
    timeout: Seconds | None = None


class ExecRequest(_CommandRequest):
    type: Literal["exec"]
    stdin: StrictStr | None = None
    stream: StrictBool = False


class SpawnRequest(_CommandRequest):
    type: Literal["spawn"]
    pty: PtySize | StrictBool | None = None


class AttachRequest(_Request):
    type: Literal["attach"]
    pid: Pid
    binary: StrictBool = False
    encoding: Encoding = "utf-8"
    replay: StrictBool = True


class DetachRequest(_Request):
    type: Literal["detach"]
    pid: Pid


class StdinRequest(_Request):
    type: Literal["stdin"]
    pid: Pid
    data: StrictStr = ""
    encoding: Encoding = "utf-8"
    eof: StrictBool = False


class SignalRequest(_Request):
    type: Literal["signal"]
    pid: Pid
    signal: NonEmpty | Annotated[StrictInt, Field(ge=1, le=64)] = "SIGTERM"


class ResizeRequest(_Request):
    type: Literal["resize"]
    pid: Pid
    cols: Size
    rows: Size


class ProcessesRequest(_Request):
    type: Literal["processes"]


class KillAllRequest(_Request):
    """Kill every process of the sandbox user (a fork bomb's way back)."""

    type: Literal["killAll"]


METADATA_PREFIX = "user.e2b."
"""The extended-attribute namespace file metadata lives in (E2B's envd's, so both agree)."""
MAX_METADATA_BYTES = 4096


def _metadata_fits(value: dict[str, str]) -> dict[str, str]:
    total = sum(len(METADATA_PREFIX) + len(key) + len(text) for key, text in value.items())
    if total > MAX_METADATA_BYTES:
        raise ValueError(f"metadata takes {total} bytes, over {MAX_METADATA_BYTES}")
    return value


Metadata = Annotated[
    dict[
        Annotated[
            StrictStr,
            Field(min_length=1, max_length=255 - len(METADATA_PREFIX), pattern=r"^[\x20-\x7e]+$"),
        ],
        Annotated[StrictStr, Field(pattern=r"^[\x20-\x7e]*$")],
    ],
    AfterValidator(_metadata_fits),
]
"""User-defined file metadata (envd's limits): printable US-ASCII keys of at most 246 bytes
and values, 4096 bytes in all (each entry counted as prefix, key and value)."""


class WriteRequest(_Request):
    type: Literal["write"]
    path: NonEmpty
    content: StrictStr
    encoding: Encoding = "utf-8"
    append: StrictBool = False
    offset: Annotated[StrictInt, Field(ge=0)] | None = None
    mode: Annotated[StrictInt, Field(ge=0, le=0o7777)] | StrictStr | None = None
    metadata: Metadata | None = None
    """Once the content is written, the file's metadata becomes exactly this ({} clears it)."""


class ReadRequest(_Request):
    type: Literal["read"]
    path: NonEmpty
    binary: StrictBool = False
    """The content as one binary WebSocket message before the answer, not in it."""
    encoding: Encoding = "utf-8"
    offset: Annotated[StrictInt, Field(ge=0)] = 0
    length: Annotated[StrictInt, Field(ge=0)] | None = None


class ListRequest(_Request):
    type: Literal["list"]
    path: NonEmpty = "."
    depth: Annotated[StrictInt, Field(ge=1, le=32)] = 1


class StatRequest(_Request):
    type: Literal["stat"]
    path: NonEmpty


class ExistsRequest(_Request):
    type: Literal["exists"]
    path: NonEmpty


class MkdirRequest(_Request):
    type: Literal["mkdir"]
    path: NonEmpty
    parents: StrictBool = True
    mode: Annotated[StrictInt, Field(ge=0, le=0o7777)] | StrictStr | None = None


class RemoveRequest(_Request):
    type: Literal["remove"]
    path: NonEmpty
    recursive: StrictBool = False


class RenameRequest(_Request):
    type: Literal["rename"]
    path: NonEmpty
    newPath: NonEmpty


class WatchRequest(_Request):
    """Filesystem events under a directory until cancelled (or the directory goes)."""

    type: Literal["watch"]
    path: NonEmpty = "."
    recursive: StrictBool = False
    includeEntry: StrictBool = False
    """Each create, write and chmod event carries the entry at its path, when still there."""
    allowNetworkMounts: StrictBool = True
    """False refuses a directory on NFS, CIFS/SMB or FUSE (E2B's envd's default)."""


Language = Literal["python", "javascript", "js"]
ContextId = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class RunCodeRequest(_Request):
    """A cell in a code context (the language's default one unless `context` names one)."""

    type: Literal["runCode"]
    code: StrictStr
    language: Language = "python"
    context: ContextId | None = None
    timeout: Annotated[StrictFloat, Field(gt=0)] | Annotated[StrictInt, Field(gt=0)] | None = None
    envs: OsEnv | None = None


class CreateContextRequest(_Request):
    type: Literal["createContext"]
    language: Language = "python"
    cwd: OsText | None = None


class ListContextsRequest(_Request):
    type: Literal["listContexts"]


class RestartContextRequest(_Request):
    type: Literal["restartContext"]
    context: ContextId


class RemoveContextRequest(_Request):
    type: Literal["removeContext"]
    context: ContextId


class InterruptCodeRequest(_Request):
    """Ctrl-C for the cell running in a context (KeyboardInterrupt; the context stays)."""

    type: Literal["interruptCode"]
    context: ContextId


class CancelRequest(_Request):
    type: Literal["cancel"]
    target: RequestId


class PingRequest(_Request):
    type: Literal["ping"]


ManifestKind = Literal["f", "d", "l", "o"]
"""A file, a directory, a symlink, or anything else (a FIFO, a socket, a device)."""
ManifestEntry = tuple[StrictStr, ManifestKind, Annotated[StrictInt, Field(ge=0)], StrictStr | None]
"""`[path, kind, size, digest]`: the digest is a file's SHA-256 in hex (None when not hashed)
or a symlink's target."""


class ManifestResponse(BaseModel):
    """The agent's answer to `{"id", "type": "manifest"}`: what the sandbox's own filesystem
    holds, recorded at a snapshot or a pause without memory and compared after (docs/protocol.md,
    "Manifests"). Server ↔ agent only, so `manifest` is not in REQUESTS: a client sending it
    gets UNKNOWN_TYPE. Checked like everything a sandbox sends."""

    # Not strict as a whole, so an entry may come as a JSON array; its fields are strict.
    model_config = ConfigDict(extra="ignore")
    type: Literal["manifestResponse"]
    entries: list[ManifestEntry]
    complete: StrictBool
    """False when the agent stopped recording at its entry limit."""
    hashedBytes: Annotated[StrictInt, Field(ge=0)] = 0


_MODELS: tuple[type[_Request], ...] = (
    ExecRequest,
    SpawnRequest,
    AttachRequest,
    DetachRequest,
    StdinRequest,
    SignalRequest,
    ResizeRequest,
    ProcessesRequest,
    KillAllRequest,
    WriteRequest,
    ReadRequest,
    ListRequest,
    StatRequest,
    ExistsRequest,
    MkdirRequest,
    RemoveRequest,
    RenameRequest,
    WatchRequest,
    RunCodeRequest,
    CreateContextRequest,
    ListContextsRequest,
    RestartContextRequest,
    RemoveContextRequest,
    InterruptCodeRequest,
    CancelRequest,
    PingRequest,
)
REQUESTS: dict[str, type[_Request]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in _MODELS
}
REQUEST_TYPES = frozenset(REQUESTS)

CLIENT_EVENT_TYPES = frozenset(
    {
        "output",
        "data",
        "spawnResponse",
        "attachResponse",
        "watchStarted",
        "fsEvents",
        "codeOutput",
        "codeResult",
    }
)
"""Events a client sees: answers that come before a request's final one (the SDKs' sets are
generated from this, through docs/protocol.schema.json)."""
LINK_EVENT_TYPES = frozenset({"tunnelOpened", "egressListening", "egressConnect"})
"""Events between the server and the agent only (tunnels, egress): never relayed to a client."""
# Messages that come before a request's final one; every other type ends the request.
EVENT_TYPES = CLIENT_EVENT_TYPES | LINK_EVENT_TYPES
CREDITED_TYPES = frozenset({"output", "fsEvents", "codeOutput", "codeResult"})
"""Events the agent sends only as far as the server's credit allows (see Flow control)."""


def is_final(message: Message) -> bool:
    return message.get("type") not in EVENT_TYPES


class ProtocolError(Exception):
    """A client message the server refuses; becomes an `error` message with this code."""

    def __init__(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code
        self.message = message

    def to_message(self) -> Message:
        return error_message(self.request_id, self.code, self.message)


def describe(exc: ValidationError, *, skip: int = 0) -> str:
    """The first problem pydantic found, as `where: what` (`skip` drops leading path parts,
    e.g. the tagged union's type name)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][skip:]) or "message"
    return f"field {where!r}: {first['msg']}"


def parse_request(raw: object) -> Message:
    """Validate one decoded client message; returns it as a plain dict ready for the agent."""
    if not isinstance(raw, dict):
        raise ProtocolError(None, ErrorCode.BAD_REQUEST, "message must be a JSON object")
    request_id = raw.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise ProtocolError(None, ErrorCode.BAD_REQUEST, "field 'id' must be a string or integer")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(request_id, ErrorCode.BAD_REQUEST, "field 'type' must be a string")
    if "channel" in raw:
        raise ProtocolError(
            request_id, ErrorCode.BAD_REQUEST, "field 'channel' is the server's, not a client's"
        )
    if kind not in REQUEST_TYPES:
        raise ProtocolError(request_id, ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
    try:
        request = REQUESTS[kind].model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(request_id, ErrorCode.BAD_REQUEST, describe(exc)) from None
    return request.model_dump(mode="json", exclude_unset=True)
