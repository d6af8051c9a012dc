"""Snapshots: a sandbox's filesystem saved as a template only its owner may create from.

A snapshot is an image with labels naming its owner, the Insien instance it belongs to, the
sandbox it came from, the bytes its own layer adds, and the operator's template it descends
from (whose isolation it keeps). Plans bound how many a tenant keeps and how many bytes they
add; a tenant that is removed from the tenants file loses its snapshots too.
"""

from __future__ import annotations

import builtins
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from ..config import Settings
from ..protocol import ErrorCode
from ..runtime.base import FilesystemSnapshots, Isolation, Runtime, RuntimeFailure
from ..tenancy.quotas import QuotaExceeded
from ..tenancy.tenants import Tenant
from .errors import not_supported
from .sandbox import Sandbox, iso_timestamp

log = logging.getLogger("insien.snapshots")

SNAPSHOT_REPOSITORY = "insien-snapshot"
SNAPSHOT_OWNER_LABEL = "insien.snapshot.owner"
SNAPSHOT_SOURCE_LABEL = "insien.snapshot.source"
SNAPSHOT_BASE_LABEL = "insien.snapshot.base"
SNAPSHOT_BYTES_LABEL = "insien.snapshot.bytes"
SNAPSHOT_INSTANCE_LABEL = "insien.snapshot.instance"
"""Snapshots belong to a tenant of one Insien instance: servers sharing a Docker Engine never
list, use or purge each other's."""
SNAPSHOT_NAME_LABEL = "insien.snapshot.name"
"""A name its owner gave it (`alias:tag`), as E2B's `create_snapshot(name=...)` does."""
PURGE_INTERVAL = 5.0
DEFAULT_TAG = "default"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[A-Za-z0-9._-]{1,128})?")
"""`alias` or `alias:tag`: what E2B calls a snapshot template's name."""


class BadSnapshotName(ValueError):
    """A snapshot name that is not `alias` or `alias:tag` of letters, digits, `.`, `_`, `-`."""


def snapshot_name(name: str) -> str:
    """A snapshot name in full (`alias:tag`, the tag `default` unless given)."""
    if not NAME.fullmatch(name):
        raise BadSnapshotName(
            f"snapshot name {name!r} is not `alias` or `alias:tag` (letters, digits, . _ -)"
        )
    return name if ":" in name else f"{name}:{DEFAULT_TAG}"


@dataclass(frozen=True)
class KeptSnapshot:
    """One of a tenant's snapshots."""

    template: str
    """The image to create from (`insien-snapshot:<hex>`)."""
    sandbox_id: str | None
    created_at: str
    bytes: int
    name: str | None
    """Its name in full (`alias:tag`), if it was given one."""

    def info(self) -> dict[str, Any]:
        """As Insien's `GET /snapshots` lists it."""
        return {
            "template": self.template,
            "sandboxId": self.sandbox_id,
            "createdAt": self.created_at,
            "bytes": self.bytes,
        }

    def matches(self, wanted: str) -> bool:
        """E2B's `name` filter: its name or id, the tag optional, a namespace ignored."""
        wanted = wanted.rsplit("/", 1)[-1]
        if wanted == self.template:
            return True
        if self.name is None:
            return False
        return wanted == self.name if ":" in wanted else wanted == self.name.split(":")[0]


class SnapshotNotFound(Exception):
    """No such snapshot for this tenant (absent, or someone else's)."""


class Snapshots:
    """Taking, listing, deleting and resolving snapshot templates. On a runtime without
    `FilesystemSnapshots` (Kubernetes) taking one is NOT_SUPPORTED and there are none."""

    def __init__(
        self, runtime: Runtime, settings: Settings, tenant_exists: Callable[[str], bool]
    ) -> None:
        self._runtime = runtime
        self._store = runtime if isinstance(runtime, FilesystemSnapshots) else None
        self._settings = settings
        self._tenant_exists = tenant_exists
        self._lock = trio.Lock()  # a burst of snapshots cannot slip past the quota

    async def take(self, sandbox: Sandbox, tenant: Tenant, name: str | None = None) -> str:
        """Commit the sandbox's filesystem, within the tenant's plan; returns the template.
        A `name` (see `snapshot_name`) moves to this snapshot, and the one that had it goes,
        as E2B assigns a new build to a template of that name."""
        full_name = snapshot_name(name) if name is not None else None
        store = self._store
        if store is None:
            raise not_supported(self._runtime, "taking a snapshot")
        async with self._lock:
            everything = await self.entries(tenant)
            replaced = [s.template for s in everything if full_name and s.name == full_name]
            kept = [snap.info() for snap in everything if snap.template not in replaced]
            plan = tenant.plan
            if plan.max_snapshots is not None and len(kept) >= plan.max_snapshots:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"at most {plan.max_snapshots} snapshots; delete one (DELETE /snapshots/…)",
                    60.0,
                    "snapshots",
                )
            size = await store.writable_size(sandbox.container_id)
            used = sum(int(snap["bytes"]) for snap in kept)
            if plan.max_snapshot_bytes is not None and used + size > plan.max_snapshot_bytes:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"snapshots may hold {plan.max_snapshot_bytes} bytes; {used} are used and "
                    f"this one would add {size}",
                    60.0,
                    "snapshot_bytes",
                )
            template = f"{SNAPSHOT_REPOSITORY}:{secrets.token_hex(8)}"
            repository, tag = template.split(":")
            labels = {
                SNAPSHOT_OWNER_LABEL: tenant.id,
                SNAPSHOT_INSTANCE_LABEL: self._settings.instance,
                SNAPSHOT_SOURCE_LABEL: sandbox.id,
                SNAPSHOT_BYTES_LABEL: str(size),
                # A snapshot is isolated like the operator's template it descends from.
                SNAPSHOT_BASE_LABEL: await self._base_template(store, sandbox.options.template),
            }
            if full_name is not None:
                labels[SNAPSHOT_NAME_LABEL] = full_name
            await store.commit(sandbox.container_id, repository, tag, labels)
            for old in replaced:
                await store.remove_image(old)
        log.info("snapshot %s of sandbox %s (%d bytes)", template, sandbox.id, size)
        return template

    async def list(self, tenant: Tenant) -> list[dict[str, Any]]:
        """The tenant's snapshot templates, oldest first."""
        return [snap.info() for snap in await self.entries(tenant)]

    async def entries(self, tenant: Tenant) -> builtins.list[KeptSnapshot]:
        """The tenant's snapshots, oldest first."""
        if self._store is None:
            return []
        images = await self._store.images_labelled(f"{SNAPSHOT_OWNER_LABEL}={tenant.id}")
        found = []
        for image in images:
            if image.labels.get(SNAPSHOT_INSTANCE_LABEL) != self._settings.instance:
                continue
            for tag in image.tags:
                if tag.startswith(f"{SNAPSHOT_REPOSITORY}:"):
                    found.append(
                        KeptSnapshot(
                            template=tag,
                            sandbox_id=image.labels.get(SNAPSHOT_SOURCE_LABEL),
                            created_at=iso_timestamp(datetime.fromtimestamp(image.created, UTC)),
                            bytes=int(image.labels.get(SNAPSHOT_BYTES_LABEL) or 0),
                            name=image.labels.get(SNAPSHOT_NAME_LABEL) or None,
                        )
                    )
        return sorted(found, key=lambda snap: (snap.created_at, snap.template))

    async def named(self, tenant: Tenant, wanted: str) -> str | None:
        """The template of the tenant's snapshot named `wanted` (`alias` or `alias:tag`)."""
        if not NAME.fullmatch(wanted.rsplit("/", 1)[-1]):
            return None
        found = [s for s in await self.entries(tenant) if s.name and s.matches(wanted)]
        return found[-1].template if found else None

    async def delete(self, tenant: Tenant, template: str) -> None:
        """Remove one of the tenant's snapshots; anyone else's looks like none."""
        kept = {snap["template"] for snap in await self.list(tenant)}
        if self._store is None or template not in kept:
            raise SnapshotNotFound(template)
        await self._store.remove_image(template)
        log.info("snapshot %s deleted by %s", template, tenant.id)

    async def purge_forever(self) -> None:
        """Snapshots of tenants that are gone from the tenants file go with them."""
        if self._store is None:
            return  # no snapshots here
        while True:
            try:
                await self._purge(self._store)
            except RuntimeFailure as exc:
                log.warning("snapshot purge: %s", exc)
            await trio.sleep(PURGE_INTERVAL)

    async def _purge(self, store: FilesystemSnapshots) -> None:
        images = await store.images_labelled(f"{SNAPSHOT_INSTANCE_LABEL}={self._settings.instance}")
        for image in images:
            owner = image.labels.get(SNAPSHOT_OWNER_LABEL, "")
            if owner and not self._tenant_exists(owner):
                for tag in image.tags:
                    if tag.startswith(f"{SNAPSHOT_REPOSITORY}:"):
                        log.info("removing snapshot %s: tenant %s is gone", tag, owner)
                        await store.remove_image(tag)

    async def _base_template(self, store: FilesystemSnapshots, template: str) -> str:
        if template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            labels = await store.image_labels(template) or {}
            return labels.get(SNAPSHOT_BASE_LABEL, self._settings.agent_image)
        return template

    async def resolve(self, template: str, tenant: Tenant) -> Isolation | None:
        """How sandboxes of a template this tenant may use run; None if it may not: the
        operator's images, or a snapshot this tenant made here (isolated like its base)."""
        if template in self._settings.allowed_templates:
            return self._settings.isolation(template)
        if self._store is None or not template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            return None
        labels = await self._store.image_labels(template)
        if labels is None or labels.get(SNAPSHOT_OWNER_LABEL) != tenant.id:
            return None
        if labels.get(SNAPSHOT_INSTANCE_LABEL) != self._settings.instance:
            return None
        base = labels.get(SNAPSHOT_BASE_LABEL, self._settings.agent_image)
        return self._settings.isolation(base)
