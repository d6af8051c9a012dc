"""Tenants: who may call, with which keys, within which plan.

Keys live in a TOML file the operator keeps (`INSIEN_TENANTS_FILE`), stored as SHA-256 hashes
and compared in constant time. The file is re-read when it changes, so adding a tenant or
revoking a key needs no restart; a file that no longer parses is logged and the previous
version stays in force. The seed's single `API_KEY` is one more tenant, `default`.

    [tenants.acme]
    max_sandboxes = 20          # live at once
    create_rate = 60            # creates per minute (bucket of `create_burst`)
    max_connections = 64        # WebSockets and /events streams open at once
    max_snapshots = 10          # snapshot templates kept at once
    max_snapshot_bytes = "5g"   # what their own layers add up to
    max_volumes = 10            # named volumes kept at once
    max_volume_bytes = "20g"    # what their size limits add up to
    max_cpus = 2
    max_memory = "2g"
    max_pids = 1024
    keys = [
      { id = "acme-ci", sha256 = "9f86d08…" },
      { id = "acme-old", sha256 = "…", revoked = true },
    ]
    webhooks = [                # lifecycle events, POSTed and signed (operations/webhooks.py)
      { url = "https://hooks.acme.example/insien", secret = "…", events = ["sandbox.ended"] },
    ]

    [tenants.default]           # the API_KEY's tenant: webhooks only
    webhooks = [{ url = "http://127.0.0.1:9000/hook", secret = "…" }]
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from ..operations.events import EVENT_TYPES
from ..operations.webhooks import Webhook
from .resources import Resources, parse_size

log = logging.getLogger("insien.tenants")

DEFAULT_TENANT_ID = "default"
RELOAD_CHECK_SECONDS = 0.25
"""How often the tenants file's timestamp is looked at (a stat): revocation takes effect within
this and the WebSocket check (`api/ws.py`), well inside a second."""
TenantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: 256 random bits, so a plain SHA-256 of it is a safe thing to store."""
    return "isk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Plan:
    """A tenant's limits; None means "no limit of this kind"."""

    max_sandboxes: int | None = None
    create_rate: float | None = None
    create_burst: int = 10
    max_connections: int | None = None
    max_resources: Resources | None = None
    max_snapshots: int | None = None
    max_snapshot_bytes: int | None = None
    max_volumes: int | None = None
    max_volume_bytes: int | None = None
    """What the size limits of a tenant's volumes may add up to."""


@dataclass(frozen=True)
class Tenant:
    """Who is calling. Sandboxes are owned by a tenant id; keys never leave this module."""

    id: str
    plan: Plan = field(default_factory=Plan, compare=False)
    key_id: str | None = field(default=None, compare=False)
    """Which of the tenant's keys the caller used (for revocation), when known."""
    webhooks: tuple[Webhook, ...] = field(default=(), compare=False, repr=False)


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(min_length=1, max_length=64)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    revoked: StrictBool = False


class WebhookEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+", max_length=2048)]
    secret: Annotated[str, Field(min_length=16, max_length=512)]
    events: list[str] = []
    """Event types to receive (operations/events.py); none for every type."""

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}")
        return value

    def webhook(self) -> Webhook:
        return Webhook(self.url, self.secret, frozenset(self.events))


class TenantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: list[KeyEntry] = []
    webhooks: Annotated[list[WebhookEntry], Field(max_length=16)] = []
    max_sandboxes: Annotated[int, Field(ge=0)] | None = None
    create_rate: Annotated[float, Field(gt=0)] | None = None
    create_burst: Annotated[int, Field(ge=1)] | None = None
    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_snapshots: Annotated[int, Field(ge=0)] | None = None
    max_snapshot_bytes: int | None = None
    max_volumes: Annotated[int, Field(ge=0)] | None = None
    max_volume_bytes: int | None = None
    max_cpus: Annotated[float, Field(gt=0)] | None = None
    max_memory: int | None = None
    max_pids: Annotated[int, Field(ge=1)] | None = None

    @field_validator("max_memory", "max_snapshot_bytes", "max_volume_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return None if value is None else parse_size(value)  # type: ignore[arg-type]


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tenants: dict[TenantId, TenantEntry] = {}


def load_tenants_file(path: Path) -> TenantsFile:
    """Parse and validate; raises ValueError with the file name and the first problem."""
    try:
        raw = tomllib.loads(path.read_text())
        parsed = TenantsFile.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError, ValidationError, ValueError) as exc:
        raise ValueError(f"tenants file {path}: {exc}") from exc
    default = parsed.tenants.get(DEFAULT_TENANT_ID)
    if default is not None and default.model_fields_set != {"webhooks"}:
        raise ValueError(
            f"tenants file {path}: the id {DEFAULT_TENANT_ID!r} is the API_KEY's; "
            "its entry may only name webhooks"
        )
    seen: set[str] = set()
    for entry in parsed.tenants.values():
        for key in entry.keys:
            if key.sha256 in seen:
                raise ValueError(f"tenants file {path}: a key hash appears twice")
            seen.add(key.sha256)
    return parsed


class TenantDirectory:
    """Resolves API keys and tenant ids to tenants with their plans."""

    def __init__(
        self,
        *,
        api_key: str | None,
        default_plan: Plan,
        operator_max: Resources,
        path: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` paces the re-reads of the file (tests pass their own)."""
        self._clock = clock
        self._api_key_hash = hash_key(api_key) if api_key else None
        self._default_plan = default_plan
        self._operator_max = operator_max
        self._path = path
        self._tenants: dict[str, Tenant] = {}
        # (sha256 digest, tenant id, key id), revoked keys left out
        self._keys: list[tuple[bytes, str, str]] = []
        self._loaded_stamp: tuple[int, int] | None = None
        self._checked_at = -RELOAD_CHECK_SECONDS
        if path is not None:
            self._apply(load_tenants_file(path), self._stamp())

    def _stamp(self) -> tuple[int, int] | None:
        assert self._path is not None
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def _plan(self, entry: TenantEntry) -> Plan:
        base, ceiling = self._default_plan, self._operator_max
        wanted = Resources(
            entry.max_cpus or ceiling.cpus,
            entry.max_memory or ceiling.memory,
            entry.max_pids or ceiling.pids,
        )
        return Plan(
            max_sandboxes=entry.max_sandboxes
            if entry.max_sandboxes is not None
            else base.max_sandboxes,
            create_rate=entry.create_rate or base.create_rate,
            create_burst=entry.create_burst or base.create_burst,
            max_connections=entry.max_connections or base.max_connections,
            max_snapshots=entry.max_snapshots
            if entry.max_snapshots is not None
            else base.max_snapshots,
            max_snapshot_bytes=entry.max_snapshot_bytes or base.max_snapshot_bytes,
            max_volumes=entry.max_volumes if entry.max_volumes is not None else base.max_volumes,
            max_volume_bytes=entry.max_volume_bytes or base.max_volume_bytes,
            # A plan can narrow the operator's ceiling, never widen it.
            max_resources=wanted.capped(ceiling),
        )

    def _apply(self, parsed: TenantsFile, stamp: tuple[int, int] | None) -> None:
        tenants = {
            tid: Tenant(tid, self._plan(entry), webhooks=tuple(h.webhook() for h in entry.webhooks))
            for tid, entry in parsed.tenants.items()
        }
        keys = [
            (bytes.fromhex(key.sha256), tid, key.id)
            for tid, entry in parsed.tenants.items()
            for key in entry.keys
            if not key.revoked
        ]
        self._tenants, self._keys, self._loaded_stamp = tenants, keys, stamp
        log.info("tenants: %d from %s", len(tenants), self._path)

    def _refresh(self) -> None:
        if self._path is None:
            return
        now = self._clock()
        if now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        stamp = self._stamp()
        if stamp == self._loaded_stamp:
            return
        try:
            parsed = load_tenants_file(self._path)
        except ValueError as exc:
            log.error("%s; keeping the tenants loaded before", exc)
            self._loaded_stamp = stamp  # do not re-parse the same broken file every second
            return
        self._apply(parsed, stamp)

    def for_key(self, key: str | None) -> Tenant | None:
        """The key's tenant, or None; every stored hash is compared, whatever matches."""
        if not key:
            return None
        self._refresh()
        digest = hashlib.sha256(key.encode()).digest()
        found: tuple[str, str] | None = None
        if self._api_key_hash is not None and hmac.compare_digest(
            digest, bytes.fromhex(self._api_key_hash)
        ):
            found = (DEFAULT_TENANT_ID, DEFAULT_TENANT_ID)
        for stored, tenant_id, key_id in self._keys:
            if hmac.compare_digest(digest, stored):
                found = (tenant_id, key_id)
        if found is None:
            return None
        tenant = self.by_id(found[0])
        return replace(tenant, key_id=found[1]) if tenant is not None else None

    def key_valid(self, tenant_id: str, key_id: str | None) -> bool:
        """Whether that key of that tenant still opens anything (not revoked, not removed)."""
        self._refresh()
        if tenant_id == DEFAULT_TENANT_ID:
            return self._api_key_hash is not None and key_id == DEFAULT_TENANT_ID
        return any(t == tenant_id and k == key_id for _, t, k in self._keys)

    def exists(self, tenant_id: str) -> bool:
        """Whether the tenant is (still) known: its snapshots are removed once it is not."""
        return self.by_id(tenant_id) is not None

    def by_id(self, tenant_id: str) -> Tenant | None:
        """The tenant as it is now; None once it was removed from the file."""
        self._refresh()
        if tenant_id == DEFAULT_TENANT_ID:
            if self._api_key_hash is None:
                return None
            listed = self._tenants.get(DEFAULT_TENANT_ID)
            hooks = listed.webhooks if listed is not None else ()
            return Tenant(DEFAULT_TENANT_ID, self._default_plan, webhooks=hooks)
        return self._tenants.get(tenant_id)

    def webhooks(self, tenant_id: str) -> tuple[Webhook, ...]:
        """The tenant's webhooks as the tenants file says now."""
        tenant = self.by_id(tenant_id)
        return tenant.webhooks if tenant is not None else ()
