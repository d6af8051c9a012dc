"""Snapshots: a sandbox's filesystem saved as a template only its owner may create from.

A snapshot is an image with labels naming its owner, the Insien instance it belongs to, the
sandbox it came from, the bytes its own layer adds, and the operator's template it descends
from (whose isolation it keeps). Plans bound how many a tenant keeps and how many bytes they
add; a tenant that is removed from the tenants file loses its snapshots too.

Each snapshot has a manifest (issue 32): what the sandbox's agent found on its filesystem when
it was taken (`manifest` in docs/protocol.md: paths, kinds, sizes and SHA-256 digests of what
the sandbox user could have written), kept sealed in the state folder. A create from the
snapshot compares its new sandbox's files with it, and a difference is an error naming the
paths, never a sandbox with fewer files. A pause without memory (a stop and a boot) is checked
the same way (`Manifest.of` before the stop, `differences` after the boot).

A little long because snapshots and their manifests share the seal and the image labels; the
manifest check could stand alone next.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from pydantic import ValidationError

from ..config import Settings
from ..protocol import ErrorCode, ManifestResponse, describe
from ..runtime.base import FilesystemSnapshots, Isolation, Runtime, RuntimeFailure
from ..tenancy.quotas import QuotaExceeded
from ..tenancy.tenants import Tenant
from .errors import not_supported
from .provenance import ProvenanceError, Sealer
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
SNAPSHOT_MANIFEST_LABEL = "insien.snapshot.manifest"
"""The tag of a snapshot taken with a manifest, on that snapshot (an image built from it
inherits the label, with another image's tag: that one has no manifest). One whose manifest
file is missing is a snapshot a killed server did not finish: never listed or created from,
and purged."""
MANIFEST_FOLDER = "snapshot-manifests"
NAMED_DIFFERENCES = 10
"""How many differing paths an error names (then how many more there are)."""
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


class ManifestMismatch(RuntimeFailure):
    """A sandbox's files are not what its manifest recorded (a create from a snapshot, a
    resume after a pause without memory); the message names what differs. A RuntimeFailure,
    so the fronts answer it as one (503 UNAVAILABLE, with the message)."""


@dataclass(frozen=True)
class Manifest:
    """What a sandbox's agent found on its filesystem: kind, size and digest by path."""

    entries: dict[str, tuple[str, int, str | None]]
    complete: bool = True

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> Manifest:
        """The agent's `manifestResponse` (an `error` or anything malformed: RuntimeFailure)."""
        if answer.get("type") == "error":
            raise RuntimeFailure(f"the sandbox could not list its files: {answer.get('message')}")
        try:
            found = ManifestResponse.model_validate(answer)
        except ValidationError as exc:
            raise RuntimeFailure(f"the sandbox's manifest is malformed: {describe(exc)}") from None
        entries: dict[str, tuple[str, int, str | None]] = {
            path: (kind, size, digest) for path, kind, size, digest in found.entries
        }
        return cls(entries, found.complete)

    @classmethod
    async def of(cls, sandbox: Sandbox) -> Manifest | None:
        """Ask the sandbox's agent for its manifest now; None from an agent that has no
        `manifest` request (UNKNOWN_TYPE: one older than this server, or a test's fake)."""
        answer = await sandbox.link.call({"type": "manifest"})
        if answer.get("type") == "error" and answer.get("code") == ErrorCode.UNKNOWN_TYPE:
            return None
        return cls.from_answer(answer)

    def check_against(self, now: Manifest | None, what: str) -> None:
        """`check`, where an agent that cannot list its files is a mismatch too."""
        if now is None:
            raise ManifestMismatch(f"{what}: its agent cannot list its files to check them")
        self.check(now, what)

    def settled(self, later: Manifest) -> tuple[Manifest, builtins.list[str]]:
        """Only the entries that are the same in `later` (taken after a commit): what changed
        in between, the commit may hold either way. Also returns the paths left out."""
        same = {
            path: entry for path, entry in self.entries.items() if later.entries.get(path) == entry
        }
        moving = sorted((self.entries.keys() | later.entries.keys()) - same.keys())
        return Manifest(same, self.complete and later.complete), moving

    def differences(self, now: Manifest) -> builtins.list[str]:
        """What `now` lacks or holds differently, one line per path: `missing`, a kind or a
        size that changed, or content whose digest differs (where both have one)."""
        found = []
        for path, (kind, size, digest) in sorted(self.entries.items()):
            there = now.entries.get(path)
            if there is None:
                found.append(f"{path}: missing")
            elif there[0] != kind:
                found.append(f"{path}: was {_KINDS[kind]}, is {_KINDS[there[0]]}")
            elif kind == "f" and there[1] != size:
                found.append(f"{path}: {size} bytes, now {there[1]}")
            elif kind == "f" and digest and there[2] and digest != there[2]:
                found.append(
                    f"{path}: content differs (SHA-256 {digest[:12]}…, now {there[2][:12]}…)"
                )
            elif kind == "l" and there[2] != digest:
                found.append(f"{path}: a symlink to {digest!r}, now to {there[2]!r}")
        return found

    def check(self, now: Manifest, what: str) -> None:
        """ManifestMismatch naming what differs between this manifest and `now`, if anything."""
        found = self.differences(now)
        if found:
            named = "; ".join(found[:NAMED_DIFFERENCES])
            more = len(found) - NAMED_DIFFERENCES
            raise ManifestMismatch(
                f"{what}: {len(found)} paths differ from the manifest: {named}"
                + (f" (and {more} more)" if more > 0 else "")
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [[path, *entry] for path, entry in sorted(self.entries.items())],
            "complete": self.complete,
        }


_KINDS = {"f": "a file", "d": "a directory", "l": "a symlink", "o": "a special file"}


class SnapshotNotFound(Exception):
    """No such snapshot for this tenant (absent, or someone else's)."""


class Snapshots:
    """Taking, listing, deleting and resolving snapshot templates. On a runtime without
    `FilesystemSnapshots` (Kubernetes) taking one is NOT_SUPPORTED and there are none."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        tenant_exists: Callable[[str], bool],
        sealer: Sealer | None = None,
    ) -> None:
        self._runtime = runtime
        self._store = runtime if isinstance(runtime, FilesystemSnapshots) else None
        self._settings = settings
        self._tenant_exists = tenant_exists
        self._sealer = sealer
        """Seals the manifests (None: snapshots are taken without one)."""
        self._lock = trio.Lock()  # a burst of snapshots cannot slip past the quota
        self._taking: set[str] = set()
        """Snapshots committed whose manifest is not written yet: not to be purged."""

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
            if self._sealer is None:
                await store.commit(sandbox.container_id, repository, tag, labels)
            else:
                await self._commit_with_manifest(store, sandbox, template, labels)
            for old in replaced:
                await store.remove_image(old)
                self._forget_manifest(old)
        log.info("snapshot %s of sandbox %s (%d bytes)", template, sandbox.id, size)
        return template

    async def _commit_with_manifest(
        self, store: FilesystemSnapshots, sandbox: Sandbox, template: str, labels: dict[str, str]
    ) -> None:
        """Commit with a manifest of what the commit holds: the sandbox's files listed before
        and after the commit (which freezes the container), keeping what both agree on; the
        manifest is written (sealed) before the snapshot is answered or listed."""
        repository, tag = template.split(":")
        before = await Manifest.of(sandbox)
        if before is None:
            await store.commit(sandbox.container_id, repository, tag, labels)
            return
        self._taking.add(template)
        try:
            await store.commit(
                sandbox.container_id, repository, tag, {**labels, SNAPSHOT_MANIFEST_LABEL: tag}
            )
            try:
                after = await Manifest.of(sandbox)
                if after is None:
                    raise RuntimeFailure("the sandbox's agent stopped listing its files")
                manifest, moving = before.settled(after)
                if moving:
                    log.info(
                        "snapshot %s: %d paths changed while it was taken, left out of its "
                        "manifest: %s",
                        template,
                        len(moving),
                        ", ".join(moving[:NAMED_DIFFERENCES]),
                    )
                await trio.to_thread.run_sync(self._write_manifest, template, manifest)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await store.remove_image(template)
                raise
        finally:
            self._taking.discard(template)

    def _manifest_path(self, template: str) -> Path:
        return self._settings.state_dir / MANIFEST_FOLDER / f"{template.split(':', 1)[1]}.json"

    def _forget_manifest(self, template: str) -> None:
        """A removed snapshot's manifest goes with it."""
        if self._sealer is not None:
            self._manifest_path(template).unlink(missing_ok=True)

    def _write_manifest(self, template: str, manifest: Manifest) -> None:
        """Write the sealed manifest atomically (a temporary file, fsync, rename)."""
        assert self._sealer is not None
        path = self._manifest_path(template)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The seal is the notes' HMAC bound to the template: a manifest copied to another
        # snapshot's name, or edited, does not verify.
        body = self._sealer.seal_notes(template, manifest.to_json())
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(body, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)

    def _read_manifest(self, template: str) -> Manifest | None:
        """The snapshot's sealed manifest; None if there is none; RuntimeFailure if it does not
        verify."""
        assert self._sealer is not None
        try:
            raw = json.loads(self._manifest_path(template).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(
                f"snapshot {template}: its manifest cannot be read: {exc}"
            ) from None
        try:
            body = self._sealer.verified_notes(template, raw)
            return Manifest.from_answer({"type": "manifestResponse", **body})
        except (ProvenanceError, RuntimeFailure) as exc:
            raise RuntimeFailure(
                f"snapshot {template}: its manifest is not this server's: {exc}"
            ) from None

    def _unfinished(self, template: str, labels: dict[str, str]) -> bool:
        """A snapshot committed with a manifest that was never written (its server was killed
        in between) and is not being taken now."""
        return (
            self._sealer is not None
            and labels.get(SNAPSHOT_MANIFEST_LABEL) == template.split(":", 1)[1]
            and template not in self._taking
            and not self._manifest_path(template).exists()
        )

    async def verify_created(self, sandbox: Sandbox) -> None:
        """A sandbox just created from a snapshot holds every file its manifest names, as it
        was (ManifestMismatch naming the differences otherwise). Nothing to do for a template
        that is not a snapshot with a manifest."""
        template = sandbox.options.template
        if self._sealer is None or not template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            return
        recorded = await trio.to_thread.run_sync(self._read_manifest, template)
        if recorded is None:
            return  # taken before manifests, or by a server without one
        recorded.check_against(await Manifest.of(sandbox), f"sandbox from snapshot {template}")

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
                if tag.startswith(f"{SNAPSHOT_REPOSITORY}:") and not self._unfinished(
                    tag, dict(image.labels)
                ):
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
        self._forget_manifest(template)
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
            gone = bool(owner) and not self._tenant_exists(owner)
            for tag in image.tags:
                if not tag.startswith(f"{SNAPSHOT_REPOSITORY}:"):
                    continue
                if gone:
                    log.info("removing snapshot %s: tenant %s is gone", tag, owner)
                elif self._unfinished(tag, dict(image.labels)):
                    log.info("removing snapshot %s: its manifest was never written", tag)
                else:
                    continue
                await store.remove_image(tag)
                self._forget_manifest(tag)

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
        if self._unfinished(template, labels):
            return None  # a snapshot its server never finished is no template
        base = labels.get(SNAPSHOT_BASE_LABEL, self._settings.agent_image)
        return self._settings.isolation(base)
