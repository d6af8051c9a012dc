"""What the core needs from a place that runs sandboxes: the `Runtime` protocol (a small
required core), the optional capabilities (`Pausable`, `Stoppable`, `Stats`, `ImageStore`,
`FilesystemSnapshots`, `VolumeStore`, `ImageBuilder`) and their types.

The core (`insien.sandboxes`) talks to these protocols only; `runtime.docker` implements all
of them with docker-py and a native attach, `runtime.kubernetes` the core alone (pods over the
attach subresource), and another runtime (a VM per sandbox) implements what it can without
touching the core. Everything here is neutral: no Docker response shapes, no frame headers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Protocol, runtime_checkable

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
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")
"""What the agent (root inside the sandbox) keeps of Docker's default set; everything else,
NET_RAW, MKNOD, SYS_CHROOT, SETFCAP, AUDIT_WRITE and NET_BIND_SERVICE among it, is dropped."""
DEFAULT_PYTHON = "/usr/bin/python3"
"""Where sandbox images have python3, unless the operator says otherwise (INSIEN_AGENT_PYTHON,
a template's `python`): where the agent runs on the runtime Insien brings, it is this one."""


class RuntimeFailure(Exception):
    """The runtime refused an operation (bad image, daemon down, …)."""


class ImageNotFound(RuntimeFailure):
    """The sandbox image is not present where the runtime runs sandboxes."""


class StreamCorrupt(Exception):
    """An agent's stream broke the runtime's own framing: the bytes cannot be trusted."""


class StreamKind(enum.IntEnum):
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class VolumeMount:
    """One of a tenant's volumes as a sandbox sees it (already checked by the core)."""

    volume: str
    """The runtime's name of the volume."""
    path: str
    read_only: bool


@dataclass(frozen=True)
class Isolation:
    """How sandboxes of a template run: OCI runtime (None: the runtime's default), network,
    interpreter. The operator's settings choose it per template (`Settings.isolation`); a
    create carries it into its `ContainerSpec`."""

    runtime: str | None
    network: str
    python: str


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one sandbox container."""

    sandbox_id: str
    image: str
    labels: Mapping[str, str]
    """Every label, already sealed by the core (see `sandboxes.provenance`)."""
    python: str
    """The absolute path of the image's python3 (never looked up in PATH): code contexts run
    on it, and so does the agent where the runtime brings none of its own (Kubernetes)."""
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
    volumes: tuple[VolumeMount, ...] = ()
    """Tenants' volumes to mount (a runtime without `VolumeStore` is never given any)."""
    root: bool = False
    """User code may become root (commands asking for it, `sudo` where the runtime lets set-uid
    programs work): only where root inside is unprivileged on the host (`sandboxes.root`)."""


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


@runtime_checkable
class BulkCapable(Protocol):
    """An agent channel with a second path beside it for bulk bytes: the host path of a Unix
    socket the agent listens on, in a per-sandbox directory bind-mounted into the container
    (docs/protocol.md, "The bulk socket"). None or not implemented: stdio carries everything
    (Kubernetes: the pod's filesystem is on another machine)."""

    bulk_socket: str | None


class Runtime(Protocol):
    """The required core: what every place that runs sandboxes must do. A sandbox is a
    container made from a spec with the agent in it, started, attached to (the agent's
    channel), inspected, found again after a restart, and removed.

    Everything else is an optional capability below, a protocol of its own that the core asks
    for by type (`isinstance(runtime, Pausable)`): a runtime states what it can do by what it
    implements, and the core answers NOT_SUPPORTED for the rest before calling anything.
    """

    name: str
    """How messages name this runtime ("pausing a sandbox is not available on Kubernetes")."""

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
        """Stop and remove the container, running or not; one already gone is not an error."""
        ...

    async def rename(self, container_id: str, name: str) -> None:
        """Record a name on the container that nothing inside it can change (a claimed pooled
        sandbox's sealed owner); `inspect` reads it back as `ContainerInfo.name`."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """What the container is now; None when there is no such container."""
        ...

    async def list_sandboxes(self, instance: str) -> list[str]:
        """Ids of the containers (any state) this instance labelled as its sandboxes."""
        ...


@runtime_checkable
class Pausable(Protocol):
    """Freezing every process of a sandbox and thawing it again (Docker's cgroup freezer).

    A memory snapshot (a VM's saved RAM, so a paused sandbox can leave the host and resume
    elsewhere) would be a capability of its own beside this one, asked for where the core
    pauses; nothing needs it until such a runtime exists."""

    async def pause(self, container_id: str) -> None: ...

    async def unpause(self, container_id: str) -> None: ...


@runtime_checkable
class Stoppable(Protocol):
    """Stopping a sandbox's container with its filesystem kept, to `start` it again later: a
    new boot on the same files (E2B's filesystem-only pause). Every process and everything in
    memory (and in the `/tmp` tmpfs) is gone; `attach` before `start` reaches the new agent."""

    async def stop(self, container_id: str) -> None:
        """Stop the container (its processes get a short grace, then SIGKILL); its writable
        layer stays until `remove`."""
        ...


@runtime_checkable
class Stats(Protocol):
    """Reading a container's cgroup counters from outside it. Without it the core uses what
    the agent reads of its own cgroup."""

    async def usage(self, container_id: str) -> Usage | None:
        """CPU, memory and pids of a running container from its cgroup (None: not running)."""
        ...


@runtime_checkable
class ImageStore(Protocol):
    """Images the runtime can look at and remove where it runs sandboxes. Without it a
    template is not checked before its create (a missing one fails that create with the
    runtime's reason) and image labels (`insien.contexts`) are not read."""

    async def image_exists(self, name: str) -> bool: ...

    async def image_labels(self, name: str) -> dict[str, str] | None:
        """An image's labels, or None when there is no such image."""
        ...

    async def images_labelled(self, label: str) -> list[ImageInfo]:
        """Images carrying `label` (`name` or `name=value`)."""
        ...

    async def remove_image(self, name: str) -> None:
        """Untag and remove an image; one already gone is not an error."""
        ...


@runtime_checkable
class FilesystemSnapshots(ImageStore, Protocol):
    """Saving a container's filesystem as an image a later create can start from (snapshots);
    the images are the store's, so listing and deleting snapshots is `ImageStore`'s part."""

    async def commit(
        self, container_id: str, repository: str, tag: str, labels: dict[str, str]
    ) -> str:
        """Save the container's filesystem as an image whose `insien.*` labels are only the
        ones given; returns the image id."""
        ...

    async def writable_size(self, container_id: str) -> int:
        """Bytes the container wrote to its own layer: what a commit of it would add (the
        snapshot quota counts these, and usage reports them as disk)."""
        ...


@dataclass(frozen=True)
class VolumeInfo:
    """A volume the runtime keeps, with the labels it was made with."""

    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class VolumeJob:
    """A short program run in a throwaway container with one volume mounted at
    `VOLUME_JOB_MOUNT`, away from any sandbox (file operations on a volume)."""

    volume: str
    image: str
    command: tuple[str, ...]
    """The whole command line (the image's entrypoint is not used)."""
    user: str
    runtime: str | None = None
    inbox: IO[bytes] | None = None
    """A tar archive unpacked at `/` of the container before it starts."""
    outbox: str | None = None
    """A path inside the container whose tar archive is kept once the program ends."""
    timeout: float = 300.0


@dataclass
class VolumeJobResult:
    exit_code: int
    output: bytes
    """What the program wrote on stdout."""
    errors: bytes = b""
    """The end of what it wrote on stderr (for the logs)."""
    archive: IO[bytes] | None = None
    """The outbox as a tar archive (a temporary file, at its start), if one was asked for."""


VOLUME_JOB_MOUNT = "/volume"


@runtime_checkable
class VolumeStore(Protocol):
    """Named volumes that outlive sandboxes: made with labels, found by them, mounted at
    create (`ContainerSpec.volumes`), and reached without a sandbox by `run_volume_job`."""

    async def create_volume(
        self, name: str, labels: Mapping[str, str], device: str | None = None
    ) -> None:
        """Make a volume; with `device`, one that mounts that ext4 block device (a path the
        engine's host resolves) instead of a folder of the engine's own."""
        ...

    async def volumes_labelled(self, label: str) -> list[VolumeInfo]:
        """Volumes carrying `label` (`name` or `name=value`)."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Remove a volume no container uses; one already gone is not an error."""
        ...

    async def volume_users(self, name: str) -> list[str]:
        """Ids of the containers (any state) that mount the volume."""
        ...

    async def run_volume_job(self, job: VolumeJob) -> VolumeJobResult:
        """Run the job's program to its end (RuntimeFailure past its timeout); the container
        is gone afterwards whatever happened."""
        ...


@dataclass(frozen=True)
class ImageBuild:
    """An image built from a Dockerfile and a build context (template builds): the Dockerfile
    format is neutral enough that another runtime's builder (kaniko, buildah) takes it too."""

    tag: str
    context: IO[bytes]
    """A tar archive holding `Dockerfile` and the files its COPY steps name."""
    labels: Mapping[str, str]
    """Set on the built image, overriding any of the same name its base or steps carry."""
    build_args: Mapping[str, str] = field(default_factory=dict)
    network: bool = True
    """Whether build steps reach the network (package installs need it)."""
    memory: int | None = None
    no_cache: bool = False
    timeout: float = 1800.0


@runtime_checkable
class ImageBuilder(ImageStore, Protocol):
    """Building images where sandboxes run, and moving names (tags) between them."""

    async def build_image(self, build: ImageBuild, output: Callable[[str], None]) -> str:
        """Build to the end, passing each line of the builder's output to `output` as it
        comes; returns the image id, or raises RuntimeFailure with the builder's message (a
        `BuildStepFailed` when a step of the Dockerfile failed)."""
        ...

    async def tag_image(self, image: str, repository: str, tag: str) -> None:
        """Point `repository:tag` at `image` (moving it from any image it named before)."""
        ...

    async def image_size(self, name: str) -> int:
        """Bytes of the image's filesystem, every layer counted (0 if there is none)."""
        ...


class BuildStepFailed(RuntimeFailure):
    """A step of an image build failed; `step` counts the Dockerfile's instructions from 1."""

    def __init__(self, message: str, step: int | None) -> None:
        super().__init__(message)
        self.step = step
