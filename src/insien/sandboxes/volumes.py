"""Volumes: named, persistent storage a tenant owns, mounted into sandboxes at create and
reachable without one.

A volume is a runtime volume (Docker: a `local` named volume) with a random name and labels
saying whose it is, its tenant-given name, its size limit, when it was made and which Insien
instance made it, sealed with the server's key over the runtime's name of it (the seal of
`sandboxes.provenance`). Nothing is kept in memory: every lookup lists the runtime's volumes
by label and believes only those whose seal verifies, so a restarted server sees exactly
what it made, and a volume made outside Insien with Insien-like labels is never adopted.

The size limit is enforced twice where the server can (`volume_disks.py`): each volume is an
ext4 disk of its own on a loop device, so a write past the limit fails with ENOSPC inside
the sandbox; and writes over the API are measured and refused past the limit (`VolumeFull`,
507). Where it cannot (Docker's `local` driver alone cannot cap a named volume; disks need
root on the Docker host), only the accounting holds: writes from inside a sandbox are not
stopped, but show in the usage, and a volume past its limit takes no more writes over the
API until it is brought under it again.

File operations without a sandbox run as a volume job (`volume_job.py`): a throwaway
container of the default sandbox image, as the sandbox user, without network or
capabilities, that walks every path without following symlinks.

Long because every volume operation checks the same sealed ownership and accounting; the volume
jobs (`volume_job`) and disks (`volume_disks`) are modules of their own. Next seam: the file
operations without a sandbox.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import re
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import trio

from ..config import Settings
from ..protocol import ErrorCode
from ..runtime.base import (
    AGENT_DIR,
    LABEL_INSTANCE,
    LABEL_SANDBOX_ID,
    Runtime,
    RuntimeFailure,
    VolumeJob,
    VolumeJobResult,
    VolumeMount,
    VolumeStore,
)
from ..tenancy.quotas import QuotaExceeded
from ..tenancy.tenants import Tenant
from . import volume_job
from .errors import not_supported
from .provenance import ProvenanceError, Sealer
from .sandbox import iso_timestamp
from .volume_disks import VolumeDisks, disks_possible

log = logging.getLogger("insien.volumes")

RUNTIME_PREFIX = "insien-vol-"
LABEL_VOLUME_OWNER = "insien.volume.owner"
LABEL_VOLUME_NAME = "insien.volume.name"
LABEL_VOLUME_INSTANCE = "insien.volume.instance"
LABEL_VOLUME_LIMIT = "insien.volume.limit"
LABEL_VOLUME_CREATED = "insien.volume.created-at"
LABEL_VOLUME_SEAL = "insien.volume.seal"
SEALED_VOLUME_LABELS = (
    LABEL_VOLUME_OWNER,
    LABEL_VOLUME_NAME,
    LABEL_VOLUME_INSTANCE,
    LABEL_VOLUME_LIMIT,
    LABEL_VOLUME_CREATED,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_SIZE_LIMIT = 1 << 30
MIN_SIZE_LIMIT = 1 << 20
MAX_MOUNTS = 16
MAX_PATH = 1024
JOBS_AT_ONCE = 8
"""Volume jobs (each a container) running at once on this server; more wait their turn."""
PURGE_INTERVAL = 5.0
"""How often volumes of tenants gone from the tenants file are looked for (as snapshots)."""
SYSTEM_PATHS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var/run",
)
"""Where a volume may not be mounted, nor anywhere below: the system's own folders, and
`/tmp` (each sandbox's own tmpfs, already a mount there)."""
INBOX_MEMBER = volume_job.INBOX.lstrip("/")
JOB_SOURCE = Path(volume_job.__file__).read_text()


class BadVolume(ValueError):
    """A volume name, size limit or mount that is not allowed (400)."""


class VolumeNotFound(Exception):
    """No such volume for this tenant (absent, or someone else's): 404."""


class VolumeBusy(Exception):
    """Sandboxes (or a file operation under way) use the volume: 409."""


class VolumeExists(Exception):
    """The tenant has a volume of that name already: 409."""


class VolumeFull(Exception):
    """The write would take the volume past its size limit: 507."""


class VolumeCorrupt(Exception):
    """What reached the volume is not what the server received (nothing was written): 500."""


class VolumeFileError(Exception):
    """A file operation the volume job refused; `code` is a protocol error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def volume_name(name: object) -> str:
    """A tenant's name for a volume: letters, digits, `.`, `_`, `-`, at most 63."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadVolume(
            f"volume name {name!r} is 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def mount_path(path: object) -> str:
    """Where a volume may be mounted, normalised (`/data/`: `/data`); refuses `/`, any folder
    that would hide the agent, and the system's folders (`SYSTEM_PATHS`)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadVolume(f"mount path {path!r} must be absolute")
    if len(path) > MAX_PATH or "\x00" in path:
        raise BadVolume("a mount path is at most 1024 characters, without NUL")
    pieces = [piece for piece in path.split("/") if piece]
    if any(piece in (".", "..") for piece in pieces):
        raise BadVolume(f"mount path {path!r} must not contain '.' or '..'")
    normal = "/" + "/".join(pieces)
    if normal == "/":
        raise BadVolume("a volume cannot be mounted at /")
    if normal == AGENT_DIR or (AGENT_DIR + "/").startswith(normal + "/"):
        raise BadVolume(f"mount path {normal!r} would hide the sandbox's agent ({AGENT_DIR})")
    for system in (AGENT_DIR, *SYSTEM_PATHS):
        if normal == system or normal.startswith(system + "/"):
            raise BadVolume(f"mount path {normal!r} is a system folder ({system})")
    return normal


@dataclass(frozen=True)
class MountRequest:
    """One entry of a create's `volumes`."""

    name: str
    path: str
    read_only: bool = False


def checked_mounts(requests: Sequence[MountRequest]) -> list[MountRequest]:
    """The mounts with names and paths checked and paths normalised; no path twice."""
    if len(requests) > MAX_MOUNTS:
        raise BadVolume(f"at most {MAX_MOUNTS} volumes per sandbox")
    checked: list[MountRequest] = []
    for wanted in requests:
        path = mount_path(wanted.path)
        if any(path == other.path for other in checked):
            raise BadVolume(f"two volumes at {path}")
        checked.append(MountRequest(volume_name(wanted.name), path, wanted.read_only))
    return checked


def file_path(path: str | None) -> str:
    """A path inside a volume for the file routes (leading `/` optional); `..` is refused."""
    if not path:
        raise BadVolume("query parameter 'path' is required")
    if len(path) > 4096 or "\x00" in path:
        raise BadVolume("a path is at most 4096 characters, without NUL")
    if ".." in path.split("/"):
        raise BadVolume(f"{path!r}: '..' is not allowed")
    return path


@dataclass(frozen=True)
class Volume:
    """One of a tenant's volumes, as its verified labels say."""

    name: str
    runtime_name: str
    owner: str
    size_limit: int
    created_at: str

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "sizeLimit": self.size_limit, "createdAt": self.created_at}


@dataclass
class VolumeUsage:
    """What `GET /volumes/<name>` adds to a volume's info."""

    bytes_used: int
    sandboxes: list[str]


class Spool:
    """An upload written straight into the volume job's inbox: a one-file tar archive whose
    header is filled in once the size is known (a temporary file, never the whole in memory)."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by `close`)
        self.size = 0
        self.digest = hashlib.sha256()
        """Of the bytes received: the volume job checks what it copied against it."""
        self.file.write(bytes(tarfile.BLOCKSIZE))

    def _write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.digest.update(chunk)

    async def write(self, chunk: bytes) -> None:
        await trio.to_thread.run_sync(self._write, chunk)
        self.size += len(chunk)

    def finish(self) -> IO[bytes]:
        """The archive, at its start. Blocking: call in a thread."""
        padding = -self.size % tarfile.BLOCKSIZE
        self.file.write(bytes(padding + 2 * tarfile.BLOCKSIZE))
        header = tarfile.TarInfo(INBOX_MEMBER)
        header.size, header.mode = self.size, 0o644
        self.file.seek(0)
        self.file.write(header.tobuf(format=tarfile.GNU_FORMAT))
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


class Volumes:
    """Making, finding, mounting, measuring and deleting tenants' volumes, and their files.
    On a runtime without `VolumeStore` (Kubernetes) every one of these is NOT_SUPPORTED."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        sealer: Sealer,
        tenant_exists: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self._runtime = runtime
        self._store = runtime if isinstance(runtime, VolumeStore) else None
        self._settings = settings
        self._sealer = sealer
        self._tenant_exists = tenant_exists
        self._lock = trio.Lock()  # a burst of creates cannot slip past the quota or a name
        self._jobs = trio.Semaphore(JOBS_AT_ONCE)
        folder = settings.state_dir / "volume-disks"
        self._disks = VolumeDisks(folder) if self._store and disks_possible() else None
        """Disks of volumes made with one (kept working if they are turned off later)."""
        self.disks: VolumeDisks | None = None
        """Each new volume's own filesystem (its limit enforced by the kernel), if possible."""
        if self._store is not None and settings.volume_disks != "off":
            if self._disks is not None:
                self.disks = self._disks
            elif settings.volume_disks == "on":
                raise RuntimeFailure(
                    "INSIEN_VOLUME_DISKS=on needs root on the Docker host with "
                    "/dev/loop-control, losetup, mkfs.ext4 and dumpe2fs"
                )
            log.info(
                "volume size limits: %s",
                "ext4 disks on loop devices (ENOSPC inside sandboxes)"
                if self.disks is not None
                else "the server's accounting only (writes inside sandboxes are not stopped)",
            )

    def _require(self) -> VolumeStore:
        if self._store is None:
            raise not_supported(self._runtime, "volumes")
        return self._store

    # -- the tenant's volumes ---------------------------------------------------------------

    def _verified(self, runtime_name: str, labels: dict[str, str]) -> Volume | None:
        sealed = {name: labels.get(name, "") for name in SEALED_VOLUME_LABELS}
        if sealed[LABEL_VOLUME_INSTANCE] != self._settings.instance:
            return None  # another server's on the same engine: not ours to judge
        if not runtime_name.startswith(RUNTIME_PREFIX) or not self._sealer.volume_sealed(
            runtime_name, sealed, labels.get(LABEL_VOLUME_SEAL, "")
        ):
            log.warning(
                "volume %s carries Insien's labels without this server's seal", runtime_name
            )
            return None
        try:
            limit = int(sealed[LABEL_VOLUME_LIMIT])
        except ValueError:
            return None
        return Volume(
            name=sealed[LABEL_VOLUME_NAME],
            runtime_name=runtime_name,
            owner=sealed[LABEL_VOLUME_OWNER],
            size_limit=limit,
            created_at=sealed[LABEL_VOLUME_CREATED],
        )

    async def list(self, tenant: Tenant) -> builtins.list[Volume]:
        """The tenant's volumes, oldest first."""
        if self._store is None:
            return []
        found = await self._store.volumes_labelled(f"{LABEL_VOLUME_OWNER}={tenant.id}")
        volumes = [self._verified(item.name, dict(item.labels)) for item in found]
        mine = [v for v in volumes if v is not None and v.owner == tenant.id]
        return sorted(mine, key=lambda v: (v.created_at, v.name))

    async def get(self, tenant: Tenant, name: str) -> Volume:
        """The tenant's volume of that name; VolumeNotFound for none (or someone else's)."""
        self._require()
        for volume in await self.list(tenant):
            if volume.name == name:
                return volume
        raise VolumeNotFound(name)

    async def create(self, tenant: Tenant, name: str, size_limit: int | None) -> Volume:
        """Make a volume within the tenant's plan; its root belongs to the sandbox user."""
        store = self._require()
        name = volume_name(name)
        limit = DEFAULT_SIZE_LIMIT if size_limit is None else size_limit
        if limit < MIN_SIZE_LIMIT:
            raise BadVolume(f"sizeLimit is at least {MIN_SIZE_LIMIT} bytes")
        plan = tenant.plan
        async with self._lock:
            kept = await self.list(tenant)
            if any(volume.name == name for volume in kept):
                raise VolumeExists(f"a volume named {name!r} exists already")
            if plan.max_volumes is not None and len(kept) >= plan.max_volumes:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"at most {plan.max_volumes} volumes; delete one (DELETE /volumes/…)",
                    60.0,
                    "volumes",
                )
            reserved = sum(volume.size_limit for volume in kept)
            if plan.max_volume_bytes is not None and reserved + limit > plan.max_volume_bytes:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"volumes may hold {plan.max_volume_bytes} bytes together; {reserved} are "
                    f"reserved and this one would add {limit}",
                    60.0,
                    "volume_bytes",
                )
            runtime_name = f"{RUNTIME_PREFIX}{secrets.token_hex(12)}"
            sealed = {
                LABEL_VOLUME_OWNER: tenant.id,
                LABEL_VOLUME_NAME: name,
                LABEL_VOLUME_INSTANCE: self._settings.instance,
                LABEL_VOLUME_LIMIT: str(limit),
                LABEL_VOLUME_CREATED: iso_timestamp(datetime.now(UTC)),
            }
            labels = {**sealed, LABEL_VOLUME_SEAL: self._sealer.volume_seal(runtime_name, sealed)}
            device = None
            if self.disks is not None:
                device = str(await self.disks.make(runtime_name, limit))
            try:
                await store.create_volume(runtime_name, labels, device=device)
                await self._job(runtime_name, "prepare", self._settings.sandbox_user, root=True)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await store.remove_volume(runtime_name)
                    if self.disks is not None:
                        await self.disks.remove(runtime_name)
                raise
        volume = self._verified(runtime_name, labels)
        assert volume is not None
        log.info("volume %s (%s) made for %s", name, runtime_name, tenant.id)
        return volume

    async def users(self, volume: Volume) -> tuple[builtins.list[str], builtins.list[str]]:
        """(ids of this instance's sandboxes that mount it, ids of any other containers)."""
        store = self._require()
        sandboxes: builtins.list[str] = []
        others: builtins.list[str] = []
        for container_id in await store.volume_users(volume.runtime_name):
            found = await self._runtime.inspect(container_id)
            if found is None or found.gone:
                continue
            try:
                labels = self._sealer.verified_labels(found.labels)
            except ProvenanceError:
                others.append(container_id)
                continue
            if labels[LABEL_INSTANCE] == self._settings.instance:
                sandboxes.append(labels[LABEL_SANDBOX_ID])
            else:
                others.append(container_id)
        return sorted(sandboxes), others

    async def usage(self, tenant: Tenant, name: str) -> tuple[Volume, VolumeUsage]:
        volume = await self.get(tenant, name)
        answer = await self._job(volume.runtime_name, "usage")
        sandboxes, _ = await self.users(volume)
        return volume, VolumeUsage(int(answer["bytes"]), sandboxes)

    async def delete(
        self, tenant: Tenant, name: str, force: bool, destroy: Callable[[str], Awaitable[None]]
    ) -> None:
        """Remove a volume nothing mounts; with `force`, destroy the sandboxes that do first."""
        self._require()
        volume = await self.get(tenant, name)
        sandboxes, others = await self.users(volume)
        if sandboxes and not force:
            raise VolumeBusy(
                f"volume {name!r} is mounted by {len(sandboxes)} sandbox(es): "
                f"{', '.join(sandboxes)}; destroy them or delete with ?force=true"
            )
        for sandbox_id in sandboxes:
            await destroy(sandbox_id)
        for container_id in others:
            found = await self._runtime.inspect(container_id)
            if found is not None and found.running:
                raise VolumeBusy(f"a file operation on volume {name!r} is under way")
            await self._runtime.remove(container_id)  # a job left behind by a crash
        await self._remove(volume)
        log.info("volume %s (%s) deleted by %s", name, volume.runtime_name, tenant.id)

    async def _remove(self, volume: Volume) -> None:
        """The runtime's volume, then its disk (once nothing can mount it)."""
        try:
            await self._require().remove_volume(volume.runtime_name)
        except RuntimeFailure as exc:
            raise VolumeBusy(f"volume {volume.name!r} is still in use: {exc}") from None
        if self._disks is not None:
            await self._disks.remove(volume.runtime_name)

    async def _attach(self, runtime_name: str) -> None:
        """A disk-backed volume's loop device, attached before anything mounts it (a reboot
        detaches them all); a volume without a disk needs nothing."""
        if self._disks is not None and self._disks.has(runtime_name):
            await self._disks.attach(runtime_name)

    async def purge_forever(self) -> None:
        """Volumes of tenants gone from the tenants file go with them, once no sandbox mounts
        them (the tenant's sandboxes end with their timeouts)."""
        if self._store is None:
            return
        while True:
            try:
                await self.purge_once()
            except RuntimeFailure as exc:
                log.warning("volume purge: %s", exc)
            await trio.sleep(PURGE_INTERVAL)

    async def purge_once(self) -> builtins.list[str]:
        """Remove the volumes of this instance whose tenant is gone; their runtime names."""
        store = self._require()
        found = await store.volumes_labelled(f"{LABEL_VOLUME_INSTANCE}={self._settings.instance}")
        removed: builtins.list[str] = []
        for item in found:
            volume = self._verified(item.name, dict(item.labels))
            if volume is None or self._tenant_exists(volume.owner):
                continue
            sandboxes, others = await self.users(volume)
            if sandboxes or others:
                continue  # next round, once they have ended
            try:
                await self._remove(volume)
            except VolumeBusy as exc:
                log.info("volume purge: %s", exc)
                continue
            log.info(
                "volume %s (%s) removed: tenant %s is gone",
                volume.name,
                volume.runtime_name,
                volume.owner,
            )
            removed.append(volume.runtime_name)
        return removed

    async def mounts(
        self, tenant: Tenant, requests: Sequence[MountRequest]
    ) -> tuple[VolumeMount, ...]:
        """What a create mounts: each volume the tenant's own (VolumeNotFound otherwise)."""
        if not requests:
            return ()
        self._require()
        checked = checked_mounts(requests)
        mine = {volume.name: volume for volume in await self.list(tenant)}
        mounts = []
        for wanted in checked:
            volume = mine.get(wanted.name)
            if volume is None:
                raise VolumeNotFound(wanted.name)
            await self._attach(volume.runtime_name)
            mounts.append(VolumeMount(volume.runtime_name, wanted.path, wanted.read_only))
        return tuple(mounts)

    # -- files, without a sandbox -------------------------------------------------------------

    async def list_files(self, tenant: Tenant, name: str, path: str) -> dict[str, Any]:
        volume = await self.get(tenant, name)
        return await self._job(volume.runtime_name, "list", path)

    async def remove_file(self, tenant: Tenant, name: str, path: str) -> None:
        volume = await self.get(tenant, name)
        await self._job(volume.runtime_name, "remove", path)

    async def make_folder(self, tenant: Tenant, name: str, path: str) -> None:
        volume = await self.get(tenant, name)
        await self._job(volume.runtime_name, "mkdir", path)

    async def write_file(
        self, tenant: Tenant, name: str, path: str, spool: Spool
    ) -> dict[str, Any]:
        """Put an upload at `path`; its size and SHA-256 as written (VolumeFull past the
        limit). The job compares what it copied with what the server received before the
        file takes its name (VolumeCorrupt otherwise, and nothing is written)."""
        volume = await self.get(tenant, name)
        received = spool.digest.hexdigest()
        inbox = await trio.to_thread.run_sync(spool.finish)
        written = await self._job(
            volume.runtime_name,
            "write",
            path,
            str(volume.size_limit),
            received,
            inbox=inbox,
        )
        if int(written["size"]) != spool.size or written["sha256"] != received:
            raise VolumeCorrupt(
                f"{path}: the volume holds {written['size']} bytes with SHA-256 "
                f"{written['sha256']}, the server received {spool.size} with {received}"
            )
        return written

    async def read_file(
        self, tenant: Tenant, name: str, path: str
    ) -> tuple[int, str, AsyncIterator[bytes]]:
        """A file's size, SHA-256 and bytes (streamed from a temporary copy)."""
        volume = await self.get(tenant, name)
        answer, archive = await self._job_with_outbox(volume.runtime_name, "read", path)
        size, digest = int(answer["size"]), str(answer["sha256"])
        return size, digest, _stream_member(archive, size, digest)

    # -- running jobs -----------------------------------------------------------------------

    def _job_spec(
        self, volume: str, user: str, argv: tuple[str, ...], inbox: IO[bytes] | None, outbox: bool
    ) -> VolumeJob:
        image = self._settings.agent_image
        isolation = self._settings.isolation(image)
        return VolumeJob(
            volume=volume,
            image=image,
            command=(isolation.python, "-I", "-S", "-c", JOB_SOURCE, *argv),
            user=user,
            runtime=isolation.runtime,
            inbox=inbox,
            outbox=volume_job.OUTBOX if outbox else None,
        )

    async def _job(
        self, volume: str, *argv: str, root: bool = False, inbox: IO[bytes] | None = None
    ) -> dict[str, Any]:
        """Run `volume_job.py` with `argv`, as the sandbox user (root: as root, CHOWN only)."""
        user = "0:0" if root else self._settings.sandbox_user
        await self._attach(volume)
        async with self._jobs:
            result = await self._require().run_volume_job(
                self._job_spec(volume, user, argv, inbox, outbox=False)
            )
        return _answer(result)

    async def _job_with_outbox(self, volume: str, *argv: str) -> tuple[dict[str, Any], IO[bytes]]:
        user = self._settings.sandbox_user
        await self._attach(volume)
        async with self._jobs:
            result = await self._require().run_volume_job(
                self._job_spec(volume, user, argv, None, outbox=True)
            )
        try:
            answer = _answer(result)
        except BaseException:
            if result.archive is not None:
                result.archive.close()
            raise
        if result.archive is None:
            raise RuntimeFailure("the volume job left nothing to download")
        return answer, result.archive


def _answer(result: VolumeJobResult) -> dict[str, Any]:
    """The job's JSON answer, or the error it names."""
    lines = result.output.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or result.exit_code != 0:
        log.error(
            "volume job failed (exit status %d): %s",
            result.exit_code,
            result.errors.decode(errors="replace")[-2000:],
        )
        raise RuntimeFailure(f"the volume job failed (exit status {result.exit_code})")
    error = answer.get("error")
    if error is None:
        return answer
    message = str(answer.get("message", ""))
    if error == "NO_SPACE":
        raise VolumeFull(message)
    if error == "SYMLINK":
        raise VolumeFileError(ErrorCode.PERMISSION_DENIED, message)
    if error == "CORRUPT":
        raise VolumeCorrupt(message)
    code = ErrorCode(error) if error in {str(c) for c in ErrorCode} else ErrorCode.INTERNAL
    raise VolumeFileError(code, message)


async def _stream_member(archive: IO[bytes], size: int, digest: str) -> AsyncIterator[bytes]:
    """The one file of a job's outbox archive, a piece at a time; the archive is closed at
    the end (or when the reader stops). Bytes that are not the `size` and `digest` the job
    read end the stream with VolumeCorrupt instead of its last piece, so the client sees a
    broken transfer, never a complete-looking wrong file."""
    try:
        tar = await trio.to_thread.run_sync(
            lambda: tarfile.open(fileobj=archive, mode="r|")  # noqa: SIM115 (archive closed)
        )
        member = await trio.to_thread.run_sync(tar.next)
        source = tar.extractfile(member) if member is not None else None
        if source is None:
            raise RuntimeFailure("the volume job's archive holds no file")
        sent, hashed = 0, hashlib.sha256()
        pending = b""
        while chunk := await trio.to_thread.run_sync(source.read, 1 << 20):
            if pending:
                yield pending
            hashed.update(chunk)
            sent += len(chunk)
            pending = chunk
        if sent != size or hashed.hexdigest() != digest:
            raise VolumeCorrupt(
                f"the copy holds {sent} bytes with SHA-256 {hashed.hexdigest()}, the volume "
                f"{size} with {digest}"
            )
        if pending:
            yield pending
    finally:
        archive.close()


__all__ = [
    "BadVolume",
    "MountRequest",
    "Spool",
    "Volume",
    "VolumeBusy",
    "VolumeCorrupt",
    "VolumeExists",
    "VolumeFileError",
    "VolumeFull",
    "VolumeNotFound",
    "Volumes",
    "checked_mounts",
    "file_path",
    "mount_path",
    "volume_name",
]
