"""What the core needs from a place that runs sandboxes: the `Runtime` protocol and its types.

The core (`insien.sandboxes`) talks to this protocol only; `runtime.docker` implements it with
docker-py and a native attach, and another runtime (Kubernetes pods over the attach
subresource) can implement it without touching the core. Everything here is neutral: no
Docker response shapes, no frame headers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

LABEL_PREFIX = "insien."
LABEL_SANDBOX_ID = "insien.sandbox.id"
LABEL_OWNER = "insien.owner"
LABEL_INSTANCE = "insien.instance"
LABEL_CREATED_AT = "insien.created-at"
LABEL_TEMPLATE = "insien.template"
LABEL_TIMEOUT = "insien.timeout"
LABEL_IDLE_TIMEOUT = "insien.idle-timeout"
LABEL_METADATA = "insien.metadata"
LABEL_POOL = "insien.pool"
LABEL_SEAL = "insien.seal"

AGENT_DIR = "/opt/insien"
AGENT_PATH = f"{AGENT_DIR}/agent.pyz"
AGENT_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
"""The agent's process starts with this and the agent's own settings; the sandbox's `env`
reaches user commands through the agent, never the container's environment."""


class RuntimeFailure(Exception):
    """The runtime refused an operation (bad image, daemon down, …)."""


class NotSupported(RuntimeFailure):
    """The runtime cannot do this at all (Kubernetes: pause, snapshots): retrying will not help."""


class ImageNotFound(RuntimeFailure):
    """The sandbox image is not present where the runtime runs sandboxes."""


class StreamCorrupt(Exception):
    """An agent's stream broke the runtime's own framing: the bytes cannot be trusted."""


class StreamKind(enum.IntEnum):
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one sandbox container."""

    sandbox_id: str
    image: str
    labels: Mapping[str, str]
    """Every label, already sealed by the core (see `sandboxes.provenance`)."""
    python: str
    """The absolute path of the interpreter that runs the agent (never looked up in PATH)."""
    capabilities: tuple[str, ...]
    workdir: str = "/home/user"
    network_mode: str = "none"
    runtime: str | None = None
    mem_limit: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    """The agent's own settings (`INSIEN_AGENT_*`); never anything a tenant chose."""
    tmp_size: str = "256m"
    disk_limit: str | None = None
    nofile: int = 4096


@dataclass(frozen=True)
class ContainerInfo:
    """What the core reads back about a sandbox's container."""

    id: str
    name: str
    labels: Mapping[str, str]
    running: bool
    paused: bool
    oom_killed: bool
    gone: bool
    """Being removed, or dead: as good as gone."""
    cpus: float | None
    memory: int | None
    pids: int | None
    oci_runtime: str | None
    network: str | None
    evicted: bool = False
    """Taken away by its node for want of a resource (Kubernetes: a pod past its
    ephemeral-storage limit, or a node under pressure)."""


@dataclass(frozen=True)
class Usage:
    """One reading of a container's cgroup counters."""

    cpu_seconds: float
    """CPU time used since the container started."""
    cpus: float
    """CPUs the container may use (its limit, else the host's)."""
    memory_used: int
    memory_limit: int
    memory_cache: int
    pids: int


@dataclass(frozen=True)
class ImageInfo:
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    created: float
    """Seconds since the epoch."""


class AgentChannel(Protocol):
    """A sandbox agent's stdio: bytes to its stdin, (stream, bytes) pieces from its stdout and
    stderr. How they are framed on the way is the runtime's business."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive(self) -> tuple[StreamKind, bytes] | None:
        """The next piece of output, or None at the end of the stream."""
        ...

    async def aclose(self) -> None: ...


class Runtime(Protocol):
    """Creating, attaching to and removing sandbox containers, and the images they come from."""

    attach_from_start: bool
    """Whether an attach made before `start` sees everything the agent writes (Docker); if
    not (Kubernetes), the link asks the agent to replay what came before it."""

    async def create(self, spec: ContainerSpec, agent_zip: bytes) -> str:
        """Create the container with the agent in it (not started); returns its id."""
        ...

    async def attach(self, container_id: str) -> AgentChannel:
        """The agent's stdio; works before `start` and again on a running container."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def remove(self, container_id: str) -> None:
        """Remove the container, running or not; one already gone is not an error."""
        ...

    async def rename(self, container_id: str, name: str) -> None: ...

    async def pause(self, container_id: str) -> None: ...

    async def unpause(self, container_id: str) -> None: ...

    async def inspect(self, container_id: str) -> ContainerInfo | None: ...

    async def list_sandboxes(self, instance: str) -> list[str]:
        """Ids of the containers (any state) this instance labelled as its sandboxes."""
        ...

    async def commit(
        self, container_id: str, repository: str, tag: str, labels: dict[str, str]
    ) -> str:
        """Save the container's filesystem as an image whose `insien.*` labels are only the
        ones given; returns the image id."""
        ...

    async def writable_size(self, container_id: str) -> int: ...

    async def usage(self, container_id: str) -> Usage | None:
        """CPU, memory and pids of a running container from its cgroup (None: not running)."""
        ...

    async def image_labels(self, name: str) -> dict[str, str] | None: ...

    async def images_labelled(self, label: str) -> list[ImageInfo]: ...

    async def remove_image(self, name: str) -> None: ...

    async def image_exists(self, name: str) -> bool: ...

    def close(self) -> None: ...
