"""One sandbox's record: its options, state, lifetime and activity, and how it is described."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from ..egress import NetworkPolicy
from ..link import AgentLink
from ..runtime.base import VolumeMount
from ..tenancy.resources import Resources


class State(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    DESTROYED = "destroyed"
    EXPIRED = "expired"
    IDLE = "idle"
    OOM = "oom"
    AGENT_EXITED = "agent_exited"
    CONTAINER_GONE = "container_gone"
    EVICTED = "evicted"
    """The runtime's node took the sandbox away (Kubernetes eviction: disk past its limit)."""
    ERROR = "error"
    SHUTDOWN = "shutdown"
    AGENT_PROTOCOL_ERROR = "agent_protocol_error"
    """The agent wrote something no agent writes (see link.AgentProtocolError)."""


def iso_timestamp(moment: datetime) -> str:
    """`2024-01-01T00:00:00.000Z`, the createdAt format of the original Node.js design's API."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class SandboxOptions:
    """What the caller chose at create time (already checked against the operator's limits)."""

    template: str
    timeout: float
    idle_timeout: float | None
    resources: Resources
    runtime: str | None = None
    """The OCI runtime (None: Docker's default), from the operator's template settings."""
    network: str = "none"
    metadata: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    python: str = "/usr/bin/python3"
    """The interpreter that runs the agent in this template's image (an absolute path)."""
    network_policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    """Ways out (`allowOut`/`denyOut`) and whether its ports are public; changes live."""
    on_expiry: str = "end"
    """What the end of its lifetime does to a running sandbox: `end` it, `pause` it (E2B's
    autoPause: frozen, memory kept) or `stop` it (autoPauseMemory false: its container stopped,
    files kept, a resume boots it again) for up to INSIEN_MAX_TIMEOUT more, until resumed."""
    auto_resume: bool = False
    """Whether traffic to a paused sandbox (its ports, envd) resumes it (E2B's autoResume)."""
    mask_request_host: str | None = None
    """The Host its ports' programs are told (`${PORT}` replaced), E2B's maskRequestHost."""
    volumes: tuple[VolumeMount, ...] = ()
    """The tenant's volumes it mounts (checked by `sandboxes.volumes`); never pooled."""


@dataclass(eq=False)
class Sandbox:
    """A live or recently ended sandbox. Activity is anything that shows someone uses it."""

    id: str
    owner: str
    container_id: str
    created_at: datetime
    options: SandboxOptions
    link: AgentLink
    expires_at: datetime
    state: State = State.CREATING
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    end_reason: EndReason | None = None
    end_detail: str = ""
    ended_at: datetime | None = None
    clients: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    """What the server has asked the agent to keep for a restart (sent sealed)."""
    last_activity: float = field(default_factory=trio.current_time)

    @property
    def connected(self) -> bool:
        return self.state in (State.RUNNING, State.PAUSED) and self.link.connected

    def touch(self) -> None:
        """Record activity: an API call or RPC on this sandbox."""
        self.last_activity = trio.current_time()

    def idle_seconds(self) -> float:
        """How long nobody has used the sandbox; a connected client keeps it at zero."""
        if self.clients > 0:
            return 0.0
        return trio.current_time() - self.last_activity

    def extend(self, seconds: float) -> None:
        self.expires_at = datetime.now(UTC) + timedelta(seconds=seconds)

    def end(self, reason: EndReason, detail: str = "") -> bool:
        """Mark the sandbox ended (the first reason wins); True if this call ended it."""
        if self.state is State.ENDED:
            return False
        self.state = State.ENDED
        self.end_reason = reason
        self.end_detail = detail
        self.ended_at = datetime.now(UTC)
        self.ended.set()
        return True

    @property
    def close_message(self) -> str:
        """What connected clients are told when the sandbox ends."""
        reason = self.end_reason or "ended"
        return f"sandbox {reason}: {self.end_detail}" if self.end_detail else f"sandbox {reason}"

    def info(self) -> dict[str, Any]:
        return {
            "sandboxId": self.id,
            "state": str(self.state),
            "template": self.options.template,
            "createdAt": iso_timestamp(self.created_at),
            "expiresAt": iso_timestamp(self.expires_at),
            "timeout": self.options.timeout,
            "idleTimeout": self.options.idle_timeout,
            "metadata": dict(self.options.metadata),
            "resources": self.options.resources.info(),
            "network": self.options.network_policy.to_json(),
            "clients": self.clients,
            "connected": self.connected,
            "endReason": str(self.end_reason) if self.end_reason else None,
            "endedAt": iso_timestamp(self.ended_at) if self.ended_at else None,
        }
