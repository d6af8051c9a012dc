"""Result and description types returned by the SDK."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ._secrets import SecretBinding

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced.

    `truncated` means the output passed the server's cap (streaming callbacks still saw all of
    it); `timed_out` that the command was killed by its timeout; `oom` that the kernel killed it
    for passing the sandbox's memory limit; `signal` names the signal that ended it, if one did.
    """

    stdout: str
    stderr: str
    exit_code: int
    signal: str | None = None
    truncated: bool = False
    timed_out: bool = False
    oom: bool = False
    duration_ms: int | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a running command's output. `data` is bytes for PTYs, str otherwise."""

    stream: Stream
    data: str | bytes
    dropped: int = 0


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmd: str
    args: list[str]
    running: bool
    background: bool
    pty: bool
    exit_code: int | None
    signal: str | None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(raw["pid"]),
            cmd=str(raw["cmd"]),
            args=list(raw.get("args", [])),
            running=bool(raw["running"]),
            background=bool(raw.get("background", False)),
            pty=bool(raw.get("pty", False)),
            exit_code=raw.get("exitCode"),
            signal=raw.get("signal"),
        )


@dataclass(frozen=True)
class EntryInfo:
    """A file, folder or other entry in the sandbox's filesystem."""

    name: str
    path: str
    type: str  # file, dir, symlink, fifo, socket, char, block, other
    size: int
    mode: int
    mtime: float
    target: str | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> EntryInfo:
        return cls(
            name=str(raw["name"]),
            path=str(raw["path"]),
            type=str(raw["type"]),
            size=int(raw["size"]),
            mode=int(raw["mode"]),
            mtime=float(raw["mtime"]),
            target=raw.get("target"),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """Everything the service knows about a sandbox (`GET /sandboxes/<id>`)."""

    sandbox_id: str
    state: str  # creating, running, paused, ended
    template: str
    created_at: str
    expires_at: str
    timeout: float
    idle_timeout: float | None
    metadata: dict[str, str]
    resources: dict[str, float]
    clients: int
    connected: bool
    end_reason: str | None
    ended_at: str | None
    network: NetworkPolicy | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SandboxInfo:
        return cls(
            sandbox_id=str(raw["sandboxId"]),
            state=str(raw["state"]),
            template=str(raw["template"]),
            created_at=str(raw["createdAt"]),
            expires_at=str(raw["expiresAt"]),
            timeout=float(raw["timeout"]),
            idle_timeout=raw.get("idleTimeout"),
            metadata=dict(raw.get("metadata") or {}),
            resources=dict(raw.get("resources") or {}),
            clients=int(raw.get("clients", 0)),
            connected=bool(raw.get("connected")),
            end_reason=raw.get("endReason"),
            ended_at=raw.get("endedAt"),
            network=NetworkPolicy.from_wire(raw["network"]) if raw.get("network") else None,
        )


@dataclass(frozen=True)
class MetricsPoint:
    """One sample of a sandbox's recent series (`SandboxMetrics.series`)."""

    timestamp: str
    cpu_percent: float
    memory_bytes: int
    pids: int
    disk_bytes: int
    tmp_bytes: int | None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> MetricsPoint:
        return cls(
            timestamp=str(raw["timestamp"]),
            cpu_percent=float(raw["cpuPercent"]),
            memory_bytes=int(raw["memoryBytes"]),
            pids=int(raw["pids"]),
            disk_bytes=int(raw["diskBytes"]),
            tmp_bytes=_optional_int(raw.get("tmpBytes")),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class SandboxMetrics:
    """What a sandbox uses now (`GET /sandboxes/<id>/metrics`): CPU percent of its limit since
    the previous reading, memory without page cache, its writable layer on disk, processes;
    and `series`, its recent samples (each reading keeps it sampled every 5 s for a minute)."""

    timestamp: str
    cpu_count: int
    cpu_percent: float
    memory_bytes: int
    memory_limit: int
    memory_cache: int
    disk_bytes: int
    disk_limit: int
    pids: int
    egress_bytes_out: int = 0
    """Bytes the sandbox sent out through its egress proxy (counted by this server run)."""
    egress_bytes_in: int = 0
    cpu_seconds: float = 0.0
    """CPU time used since the sandbox started."""
    memory_peak: int | None = None
    """The cgroup's high-water mark (page cache included), where the kernel keeps one."""
    tmp_bytes: int | None = None
    """Used in /tmp (a tmpfs: it counts against memory, not disk)."""
    tmp_limit: int | None = None
    port_bytes_in: int = 0
    """Bytes sent into its ports (previews, forwards) through this server run."""
    port_bytes_out: int = 0
    series: tuple[MetricsPoint, ...] = ()

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SandboxMetrics:
        return cls(
            timestamp=str(raw["timestamp"]),
            cpu_count=int(raw["cpuCount"]),
            cpu_percent=float(raw["cpuPercent"]),
            memory_bytes=int(raw["memoryBytes"]),
            memory_limit=int(raw["memoryLimit"]),
            memory_cache=int(raw["memoryCache"]),
            disk_bytes=int(raw["diskBytes"]),
            disk_limit=int(raw["diskLimit"]),
            pids=int(raw["pids"]),
            egress_bytes_out=int(raw.get("egressBytesOut", 0)),
            egress_bytes_in=int(raw.get("egressBytesIn", 0)),
            cpu_seconds=float(raw.get("cpuSeconds", 0.0)),
            memory_peak=_optional_int(raw.get("memoryPeak")),
            tmp_bytes=_optional_int(raw.get("tmpBytes")),
            tmp_limit=_optional_int(raw.get("tmpLimit")),
            port_bytes_in=int(raw.get("portBytesIn", 0)),
            port_bytes_out=int(raw.get("portBytesOut", 0)),
            series=tuple(MetricsPoint.from_wire(p) for p in raw.get("series") or ()),
        )


@dataclass(frozen=True)
class LogLine:
    """A line the sandbox's agent logged (`sandbox.logs()`), with its ISO time."""

    timestamp: str
    line: str


@dataclass(frozen=True)
class FilesystemEvent:
    """One change under a watched directory: `name` relative to it, `op` one of `create`,
    `write`, `remove`, `rename` (moved away; the new name gets a `create`) or `chmod`."""

    name: str
    op: str

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> FilesystemEvent:
        return cls(name=str(raw["name"]), op=str(raw["op"]))


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network policy: where it may connect out (`allow_out`, minus `deny_out`),
    and whether its ports answer anyone (`allow_public_traffic`); `secrets`: the secrets its
    egress proxy adds on the way out, each with the placeholder the sandbox sees."""

    allow_out: list[str]
    deny_out: list[str]
    allow_public_traffic: bool
    secrets: list[SecretBinding] = field(default_factory=list)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> NetworkPolicy:
        return cls(
            allow_out=[str(rule) for rule in raw.get("allowOut") or []],
            deny_out=[str(rule) for rule in raw.get("denyOut") or []],
            allow_public_traffic=bool(raw.get("allowPublicTraffic")),
            secrets=[SecretBinding.from_wire(b) for b in raw.get("secrets") or []],
        )


@dataclass(frozen=True)
class NetworkInfo:
    """`sandbox.network.get()`: the policy, and what its egress did (since the server started)."""

    policy: NetworkPolicy
    connections: int
    refused: int
    bytes_out: int
    bytes_in: int
    secrets_used: int = 0
    """Requests the egress proxy added a secret to (docs/security.md, "Secrets")."""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> NetworkInfo:
        egress = raw.get("egress") or {}
        return cls(
            policy=NetworkPolicy.from_wire(raw),
            connections=int(egress.get("connections", 0)),
            refused=int(egress.get("refused", 0)),
            bytes_out=int(egress.get("bytesOut", 0)),
            bytes_in=int(egress.get("bytesIn", 0)),
            secrets_used=int(egress.get("secretsUsed", 0)),
        )
