"""Settings from the environment and an optional `.env`, validated once at start-up.

Every setting reads `INSIEN_<NAME>` (`env_prefix`); the seed's names (`PORT`, `API_KEY`,
`JWT_SECRET`, `AGENT_IMAGE`) are accepted too, so a seed `.env` keeps working.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .egress import Ceiling, parse_rules
from .runtime.base import DEFAULT_CAPABILITIES, DEFAULT_PYTHON, Isolation
from .tenancy.resources import Resources, parse_size
from .tenancy.tenants import Plan

MIB = 1024 * 1024


def _seed(name: str, seed: str) -> AliasChoices:
    """`INSIEN_<name>`, or the seed's own name for it (a seed `.env` keeps working)."""
    return AliasChoices(f"INSIEN_{name}", seed)


class TemplateSettings(BaseModel):
    """How sandboxes of one template are isolated, where it differs from the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    runtime: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """An OCI runtime registered with dockerd, e.g. `runsc` (gVisor)."""
    network: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """A Docker network for this template's sandboxes (the default is none)."""
    python: str | None = Field(None, pattern=r"^/[A-Za-z0-9_./+-]+$")
    """The absolute path of python3 in this image, if not INSIEN_AGENT_PYTHON."""


class PoolSettings(BaseModel):
    """One warm pool: `size` ready sandboxes of a template with these resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    template: str | None = None
    size: int = Field(ge=0, le=1000)
    max: int | None = Field(None, ge=0, le=1000)
    """The most this pool grows to under demand (default INSIEN_POOL_MAX)."""
    cpu: float | None = Field(None, gt=0)
    memory: int | str | None = None
    pids: int | None = Field(None, gt=0)


class Settings(BaseSettings):
    """The server's configuration; see the table in README.md."""

    model_config = SettingsConfigDict(
        env_prefix="INSIEN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    host: str = Field("127.0.0.1")
    port: int = Field(3000, ge=0, le=65535, validation_alias=_seed("PORT", "PORT"))
    ws_port: int | None = Field(None, ge=1, le=65535, validation_alias=_seed("WS_PORT", "WS_PORT"))
    """The seed's second port: WebSockets are served there too, and `agentUrl` points at it."""
    api_key: SecretStr | None = Field(None, validation_alias=_seed("API_KEY", "API_KEY"))
    jwt_secret: SecretStr | None = Field(None, validation_alias=_seed("JWT_SECRET", "JWT_SECRET"))
    agent_image: str = Field(
        "insien-sandbox:latest", validation_alias=_seed("AGENT_IMAGE", "AGENT_IMAGE")
    )
    interpreter_image: str = Field("insien-interpreter:latest")
    """The code interpreter's template (`insien image build --interpreter`): allowed for
    creates, and what E2B's `code-interpreter-v1` names."""
    public_url: str | None = Field(None)
    agent_python: str = Field(DEFAULT_PYTHON, pattern=r"^/[A-Za-z0-9_./+-]+$")
    """The absolute path of python3 in sandbox images; the agent never runs through PATH."""
    secret_key: SecretStr | None = Field(None)
    """Seals what the server writes on containers; default: a key kept in the state folder."""
    state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "state" / "insien",
    )
    instance: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    token_ttl: float = Field(900.0, gt=0)
    max_message_bytes: int = Field(32 * MIB, ge=64 * 1024)
    max_output_bytes: int = Field(4 * MIB, gt=0)
    max_read_bytes: int = Field(16 * MIB, gt=0)
    max_upload_bytes: int = Field(1024 * MIB, gt=0)
    max_requests_per_connection: int = Field(256, gt=0)
    max_tunnels: int = Field(256, gt=0)
    """TCP connections into one sandbox's ports open at once (`/sandbox/<id>/ports/…`)."""
    connection_buffer_bytes: int = Field(64 * MIB, ge=MIB)
    """Bytes of answers held for one WebSocket that has not read them; past it, BUSY."""
    tenant_buffer_bytes: int = Field(96 * MIB, ge=MIB)
    """The same, for all of a tenant's WebSockets together."""
    build_network: bool = False
    """INSIEN_BUILD_NETWORK: whether template build steps reach the network (package
    installs need it). Off by default: build steps run as root on the host's Docker bridge,
    where no sandbox egress policy applies."""
    default_timeout: float = Field(3600.0, gt=0)
    max_timeout: float = Field(86400.0, gt=0)
    default_idle_timeout: float | None = Field(600.0, gt=0)
    ended_retention: float = Field(3600.0, ge=0)
    templates: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins whose pages may call the API (`https://app.example.com`, or `*`)."""
    ready_timeout: float = Field(30.0, gt=0)
    network_mode: str = Field("none")
    runtime: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    template_settings: dict[str, TemplateSettings] = Field(default_factory=dict)
    memory_limit: int = Field(1 << 30, gt=0)
    cpus: float = Field(1.0, gt=0)
    pids_limit: int = Field(512, gt=0)
    max_memory: int = Field(4 << 30, gt=0)
    max_cpus: float = Field(2.0, gt=0)
    max_pids: int = Field(4096, gt=0)
    tenants_file: Path | None = Field(None)
    max_sandboxes: int | None = Field(None, ge=0)
    create_rate: float | None = Field(None, gt=0)
    create_burst: int = Field(10, ge=1)
    max_connections: int | None = Field(256, ge=1)
    max_snapshots: int | None = Field(20, ge=0)
    """Snapshot templates a tenant may keep at once (the default plan)."""
    max_snapshot_bytes: int | None = Field(20 << 30, ge=0)
    """What a tenant's snapshots may add to the disk together (their own layers)."""
    max_volumes: int | None = Field(10, ge=0)
    """Named volumes a tenant may keep at once (the default plan)."""
    max_volume_bytes: int | None = Field(20 << 30, ge=0)
    """What the size limits of a tenant's volumes may add up to."""
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    capabilities: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CAPABILITIES),
    )
    sandbox_user: str = Field(
        "1000",
        pattern=r"^([0-9]+(:[0-9]+)?|[a-z_][a-z0-9_-]*)$",
    )
    """Who user code runs as inside sandboxes: `uid[:gid]` or a name from the image; never root."""
    disk_limit: str | None = Field(None, pattern=r"^[0-9]+[kmgt]?$")
    """Size of each sandbox's writable layer (Docker's `--storage-opt size`): needs overlay2 on
    xfs with project quotas, or btrfs; Docker refuses the create anywhere else."""
    tmp_size: str = Field("256m", pattern=r"^[0-9]+[kmg]?$")
    volume_disks: Literal["auto", "on", "off"] = Field("auto")
    """Give each Docker volume an ext4 disk of its own on a loop device, so its size limit is
    enforced by the kernel (ENOSPC inside sandboxes); needs root on the Docker host (`auto`:
    when possible, `on`: refuse to start otherwise). Without: the server's accounting only."""
    nofile: int = Field(4096, ge=64)
    pool_size: int = Field(2, ge=0, le=1000)
    """Ready sandboxes of the default template and resources, for creates to take at once."""
    pool_max: int = Field(16, ge=0, le=1000)
    """The most ready sandboxes a pool grows to when creates come faster than `pool_size`
    covers (0 or anything below the size: a fixed size)."""
    pool_demand_window: float = Field(60.0, gt=0)
    """Seconds a burst of creates is remembered when sizing pools (see WarmPool)."""
    pool_memory_fraction: float = Field(0.25, gt=0, le=1)
    """Pools never grow past this share of the host's available memory (counting each ready
    sandbox at 32 MiB, what an idle one costs)."""
    pools: list[PoolSettings] = Field(default_factory=list)
    """More warm pools, as JSON: `[{"template": "img:tag", "size": 2, "memory": "512m"}]`."""
    shutdown_ends_sandboxes: bool = Field(False)
    """On SIGTERM, end every sandbox instead of leaving them for the next start to recover."""
    graceful_timeout: float = Field(5.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    runtime_backend: Literal["docker", "kubernetes"] = Field("docker")
    """Where sandboxes run: this machine's Docker Engine, or pods of a Kubernetes namespace
    (docs/kubernetes.md)."""
    k8s_kubeconfig: Path | None = Field(None)
    """A kubeconfig (its current context); default $KUBECONFIG, else the pod's own account."""
    k8s_namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """The namespace of sandbox pods; default the kubeconfig's (or the server pod's)."""
    k8s_host_network: bool = Field(False)
    """Give sandbox pods the node's network: only for a cluster without a network plugin (the
    test cluster); sandboxes otherwise get a pod network that a NetworkPolicy closes."""
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent")
    k8s_agent_runtime_dir: str | None = Field(None, pattern=r"^/")
    """Nodes' folder of the agent's runtime (`python -m insien.runtime.kubernetes.stage`):
    pods mount it read-only; unset, each pod is sent it with the agent (docs/kubernetes.md)."""
    log_format: Literal["text", "json"] = Field("text")
    """`json`: one JSON object per line (time, level, logger, message, and the request id,
    sandbox and tenant where known); see docs/operations.md."""
    metrics_token: SecretStr | None = Field(None)
    """`GET /metrics` answers a request carrying `Authorization: Bearer <this>`."""
    metrics_listen: str | None = Field(None, pattern=r"^[^:\s]+:[0-9]{1,5}$")
    """`host:port` of a listener that serves `/metrics` (and `/health`) without a token, and
    nothing else; keep it off the public network."""
    metrics_tenant_labels: bool = Field(False)
    """Label sandbox counts by tenant id (more series; off unless asked)."""
    events_kept: int = Field(10_000, ge=100, le=1_000_000)
    """Lifecycle events kept in memory for `GET /events` to resume from (`Last-Event-ID`)."""
    webhook_timeout: float = Field(10.0, gt=0)
    """Seconds one webhook attempt may take."""
    webhook_retry_seconds: float = Field(600.0, ge=0)
    """Seconds an event is retried for before it is given up (logged and counted)."""
    webhook_first_delay: float = Field(0.5, gt=0)
    """The first retry's delay ceiling; it doubles each time (full jitter), up to 30 s."""
    webhook_queue: int = Field(1000, ge=1)
    """Events waiting per webhook endpoint; more are dropped (logged and counted)."""
    e2b_templates: dict[str, str] = Field(default_factory=dict)
    """E2B template names and the images they create, as JSON: `{"my-tpl": "img:tag"}`
    (`base` is always the default image)."""
    domain: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
    """With it, `<port>-<sandboxId>.<domain>` reaches a sandbox's envd (E2B_DOMAIN's routing)."""
    egress_allow: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["public"])
    """The ceiling on every sandbox's ways out (docs/security.md): rules as in `allowOut`;
    addresses that are not public need an explicit address or network rule here."""
    egress_deny: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Refused for every sandbox, whatever its own policy allows."""
    egress_hosts: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Names the server resolves itself for egress before asking DNS, `name=address,…`
    (an internal mirror, or an upstream on this machine in tests)."""

    secrets_key: SecretStr | None = Field(None)
    """Encrypts tenants' secrets at rest (issue 30): any string of 32 or more characters
    (a key is derived from it); without it (or `secrets_key_file`) secrets are refused."""
    secrets_key_file: Path | None = Field(None)
    """A file holding `secrets_key` instead (its first line), for operators who keep keys
    out of the environment."""
    egress_ca_file: Path | None = Field(None)
    """Certificates (PEM) the egress proxy trusts besides the system's when it opens TLS to
    a host it adds a secret for (a private CA, or a test CA)."""

    @field_validator("secrets_key", "secrets_key_file", "egress_ca_file", mode="before")
    @classmethod
    def _empty_secrets_setting(cls, value: object) -> object:
        """An empty value means "not set"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", "jwt_secret", "secret_key", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`API_KEY=` in a .env means "not set": generate one, never accept an empty key."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "memory_limit", "max_memory", "max_snapshot_bytes", "max_volume_bytes", mode="before"
    )
    @classmethod
    def _size(cls, value: object) -> object:
        """`1g`, `512m` or bytes, binary units as in Docker."""
        return parse_size(value) if isinstance(value, str) else value

    @field_validator(
        "max_sandboxes",
        "create_rate",
        "max_connections",
        "max_snapshots",
        "max_snapshot_bytes",
        "max_volumes",
        "max_volume_bytes",
        mode="before",
    )
    @classmethod
    def _unlimited(cls, value: object) -> object:
        """An empty value or `none` means "no limit"."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "unlimited"):
            return None
        return value

    @model_validator(mode="after")
    def _defaults_fit(self) -> Self:
        problems = self.default_resources.within(self.max_resources)
        if problems:
            raise ValueError(f"a default sandbox must fit the maximum: {'; '.join(problems)}")
        self.pool_entries()  # raises on a pool that could never be used
        return self

    def pool_entries(self) -> list[tuple[str, Resources, int, int]]:
        """Every warm pool asked for, the default one first, as (template, resources, size,
        the most it grows to); ValueError for a template that is not allowed or resources
        past the maximum. The pool makes its profiles of them (`sandboxes.pool.profiles_of`)."""
        entries = [(self.agent_image, self.default_resources, self.pool_size, self.pool_max)]
        for pool in self.pools:
            default = self.default_resources
            resources = Resources(
                pool.cpu or default.cpus,
                parse_size(pool.memory) if pool.memory is not None else default.memory,
                pool.pids or default.pids,
            )
            ceiling = self.pool_max if pool.max is None else pool.max
            entries.append((pool.template or self.agent_image, resources, pool.size, ceiling))
        for template, resources, _, _ in entries:
            if template not in self.allowed_templates:
                raise ValueError(f"pool template {template!r} is not an allowed template")
            if resources.within(self.max_resources):
                raise ValueError(f"pool of {template!r} exceeds the maximum resources")
        return entries

    @property
    def default_resources(self) -> Resources:
        """A sandbox's limits when create asks for none."""
        return Resources(self.cpus, self.memory_limit, self.pids_limit)

    @property
    def max_resources(self) -> Resources:
        """The most any sandbox may ask for; a tenant's plan may lower it."""
        return Resources(self.max_cpus, self.max_memory, self.max_pids)

    @property
    def default_plan(self) -> Plan:
        """The API_KEY tenant's plan, and the defaults of tenants-file entries."""
        return Plan(
            max_sandboxes=self.max_sandboxes,
            create_rate=self.create_rate,
            create_burst=self.create_burst,
            max_connections=self.max_connections,
            max_snapshots=self.max_snapshots,
            max_snapshot_bytes=self.max_snapshot_bytes,
            max_volumes=self.max_volumes,
            max_volume_bytes=self.max_volume_bytes,
            max_resources=self.max_resources,
        )

    @field_validator("egress_allow", "egress_deny")
    @classmethod
    def _egress_rules(cls, value: list[str]) -> list[str]:
        parse_rules(value)  # a bad rule stops the start, with the entry named
        return value

    @field_validator("egress_hosts", mode="before")
    @classmethod
    def _host_map(cls, value: object) -> object:
        """`name=address,name2=address2` as well as a JSON object; addresses are checked."""
        if isinstance(value, str) and not value.strip().startswith("{"):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("INSIEN_EGRESS_HOSTS is name=address,...")
            value = {name.strip(): address.strip() for name, address in pairs}
        if isinstance(value, dict):
            for address in value.values():
                ipaddress.ip_address(str(address))
        return value

    def egress_ceiling(self) -> Ceiling:
        return Ceiling(parse_rules(self.egress_allow), parse_rules(self.egress_deny))

    @field_validator(
        "templates", "capabilities", "cors_origins", "egress_allow", "egress_deny", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """`INSIEN_TEMPLATES=img:1,img:2` as well as a JSON list."""
        if isinstance(value, str) and not value.strip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def allowed_templates(self) -> list[str]:
        """Images a create may name: the default image and the operator's list."""
        named = [self.interpreter_image, *self.templates, *self.template_settings]
        return [self.agent_image, *dict.fromkeys(t for t in named if t != self.agent_image)]

    def isolation(self, template: str) -> Isolation:
        """The OCI runtime, network and interpreter of an operator's template."""
        chosen = self.template_settings.get(template, TemplateSettings())
        return Isolation(
            chosen.runtime or self.runtime,
            chosen.network or self.network_mode,
            chosen.python or self.agent_python,
        )

    @property
    def max_line_bytes(self) -> int:
        """The agent-side line limit: a client message plus room for the id the link adds."""
        return self.max_message_bytes + 64 * 1024
