"""The sandbox lifecycle: registry, create, destroy, expiry, failure detection.

The manager owns one nursery: every sandbox's AgentLink runs there in its own cancel scope,
beside one reaper task that ends sandboxes whose lifetime or idle time has run out. Ended
sandboxes stay queryable for a retention period. Docker is the source of truth for what
exists: containers carry labels naming this instance.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from ._resources import agent_zipapp
from .config import Isolation, Settings
from .link import AgentLink
from .pool import Profile, WarmPool
from .protocol import ErrorCode
from .provenance import ProvenanceError, Sealer
from .quotas import CreateRateLimiter, QuotaExceeded
from .records import apply_notes, claim_notes, record_from
from .runtime.docker import (
    LABEL_CREATED_AT,
    LABEL_IDLE_TIMEOUT,
    LABEL_INSTANCE,
    LABEL_METADATA,
    LABEL_OWNER,
    LABEL_POOL,
    LABEL_SANDBOX_ID,
    LABEL_TEMPLATE,
    LABEL_TIMEOUT,
    ContainerSpec,
    DockerError,
    DockerRuntime,
)
from .sandbox import EndReason, Sandbox, SandboxOptions, State, iso_timestamp
from .tenants import Tenant

log = logging.getLogger("insien.manager")

REAP_INTERVAL = 0.5
POOL_CHECK_INTERVAL = 1.0
POOL_RETRY_DELAY = 5.0
POOL_REFILL_DELAY = 0.5
SNAPSHOT_REPOSITORY = "insien-snapshot"
SNAPSHOT_OWNER_LABEL = "insien.snapshot.owner"
SNAPSHOT_SOURCE_LABEL = "insien.snapshot.source"
SNAPSHOT_BASE_LABEL = "insien.snapshot.base"
SNAPSHOT_BYTES_LABEL = "insien.snapshot.bytes"
SNAPSHOT_INSTANCE_LABEL = "insien.snapshot.instance"
"""Snapshots belong to a tenant of one Insien instance: servers sharing a Docker Engine never
list, use or purge each other's."""
SNAPSHOT_PURGE_INTERVAL = 5.0
MAX_ENDED_KEPT = 1000


class SandboxNotFound(Exception):
    """No such sandbox for this caller (absent, ended, or owned by someone else)."""


class SandboxStartError(Exception):
    """The container was created but its agent never said it was ready."""


def new_sandbox_id() -> str:
    """128 random bits, shaped like a UUID so the seed's clients accept it."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16)))


@dataclass
class RecoveryReport:
    """What start-up found of the containers a previous run left."""

    found: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> str:
        kinds = ("recovered", "pooled", "ended", "refused", "discarded", "gone")
        parts = [f"{self.outcomes[k]} {k}" for k in kinds if self.outcomes.get(k)]
        return f"found {self.found} containers of this instance: {', '.join(parts) or 'none'}"


class SandboxManager:
    """Creates, finds and ends sandboxes. Use `async with SandboxManager.open(...)`."""

    def __init__(
        self,
        runtime: DockerRuntime,
        settings: Settings,
        nursery: trio.Nursery,
        sealer: Sealer,
        tenant_exists: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self._runtime = runtime
        self._tenant_exists = tenant_exists
        self._snapshot_lock = trio.Lock()
        self._settings = settings
        self._sealer = sealer
        self._nursery = nursery
        self._sandboxes: dict[str, Sandbox] = {}
        self._ended: OrderedDict[str, Sandbox] = OrderedDict()
        self._agent_zip = agent_zipapp()
        self._creating: dict[str, int] = {}  # tenant id -> creates under way
        self._create_rate = CreateRateLimiter()
        self._pool = WarmPool(settings.pool_profiles())
        self.recovery = RecoveryReport()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        runtime: DockerRuntime,
        settings: Settings,
        sealer: Sealer,
        tenant_exists: Callable[[str], bool] = lambda _: True,
    ) -> AsyncIterator[SandboxManager]:
        async with trio.open_nursery() as nursery:
            manager = cls(runtime, settings, nursery, sealer, tenant_exists)
            await manager._recover()
            nursery.start_soon(manager._reap)
            nursery.start_soon(manager._purge_snapshots_safely)
            nursery.start_soon(manager._refill)
            try:
                yield manager
            finally:
                with trio.CancelScope(shield=True):
                    if settings.shutdown_ends_sandboxes:
                        await manager.end_all(EndReason.SHUTDOWN)
                    else:
                        manager.detach_all()
                nursery.cancel_scope.cancel()

    def detach_all(self) -> None:
        """Let go of every sandbox without ending any: the next start recovers them."""
        for sandbox in [*self._sandboxes.values(), *self._pool.members()]:
            sandbox.link.detach()
            sandbox.scope.cancel()

    # -- recovery ---------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Rebuild the registry from this instance's labelled containers after a restart.

        Each container is recovered on its own: one that fails (unsealed labels, a hostile
        agent, a Docker error) is refused, removed and reported; the others carry on."""
        found = await self._runtime.list_sandboxes(self._settings.instance)
        self.recovery = RecoveryReport(found=len(found))
        async with trio.open_nursery() as nursery:
            for container in found:
                nursery.start_soon(self._recover_safely, container["Id"])
        if found:
            log.info("start-up: %s", self.recovery.summary())

    async def _recover_safely(self, container_id: str) -> None:
        try:
            outcome = await self._recover_one(container_id)
        except Exception as exc:
            outcome = "refused"
            log.error("refusing container %s at start-up: %r", container_id[:12], exc)
            with trio.CancelScope(shield=True):
                try:
                    await self._runtime.remove(container_id)
                except DockerError as removal:
                    log.error("could not remove container %s: %s", container_id[:12], removal)
        self.recovery.count(outcome)

    async def _recover_one(self, container_id: str) -> str:
        """Recover one container; returns what became of it (see RecoveryReport)."""
        info = await self._runtime.inspect(container_id)
        if info is None:
            return "gone"
        state = info.get("State", {})
        try:
            labels = self._sealer.verified_labels(info["Config"]["Labels"] or {})
            record = record_from(labels, info, self._settings)
            pool_key = labels[LABEL_POOL] or None
            owner = self._sealer.owner_from_name(str(info.get("Name", "")), record["id"])
        except (KeyError, ValueError, TypeError, ProvenanceError) as exc:
            log.error("refusing container %s at start-up: %s; removing it", container_id[:12], exc)
            await self._runtime.remove(container_id)
            return "refused"
        pooled = pool_key is not None and owner is None
        if pool_key is not None and owner is not None:
            record["owner"] = owner  # claimed: its sealed name says by whom
        if pool_key is None and owner is not None:
            raise ProvenanceError("a claimed name on a container that was never pooled")
        if not state.get("Running"):
            # It ended while the server was down: its owner can still ask why.
            reason = EndReason.OOM if state.get("OOMKilled") else EndReason.AGENT_EXITED
            detail = "while the server was down"
            name = f"sandbox {record['id'][:8]}"
            ended = Sandbox(**record, link=AgentLink.gone(name=name, reason=detail))
            ended.end(reason, detail)
            if not pooled:
                self._ended[ended.id] = ended
            log.warning("sandbox %s ended (%s) while the server was down", ended.id, reason)
            await self._runtime.remove(container_id)
            return "ended"
        was_paused = bool(state.get("Paused"))
        try:
            if was_paused:
                await self._runtime.unpause(container_id)  # the agent must answer the resume
            stream = await self._runtime.attach(container_id)
        except DockerError as exc:
            log.warning("removing container %s: cannot attach (%s)", container_id[:12], exc)
            await self._runtime.remove(container_id)
            return "refused"
        sandbox = Sandbox(
            **record,
            link=AgentLink(
                stream,
                name=f"sandbox {record['id'][:8]}",
                max_line=self._settings.max_line_bytes,
                resume_after=0,
            ),
        )
        if not pooled:
            self._sandboxes[sandbox.id] = sandbox
        await self._nursery.start(self._keep_link, sandbox)
        with trio.move_on_after(self._settings.ready_timeout):
            await _first_of(sandbox.link.ready.wait, sandbox.link.closed.wait)
        if not sandbox.link.connected:
            why = sandbox.link.close_reason or "the agent did not answer the resume"
            reason = (
                EndReason.AGENT_PROTOCOL_ERROR if sandbox.link.protocol_error else EndReason.ERROR
            )
            await self._finish(sandbox, reason, f"not recovered: {why}")
            return "refused"
        sandbox.state = State.RUNNING
        raw_notes = (sandbox.link.resumed or {}).get("notes") or {}
        try:
            notes = self._sealer.verified_notes(sandbox.id, raw_notes) if raw_notes else {}
        except ProvenanceError:
            log.error("sandbox %s: its agent's notes are not sealed; ignoring them", sandbox.id)
            notes = {}
        if pooled and (notes.get("claimed") or raw_notes.get("claimed")):
            # Claimed just before the server died, not yet renamed: whose it is is unknown.
            log.warning("removing sandbox %s: claimed but its owner was never recorded", sandbox.id)
            await self._discard(sandbox)
            return "refused"
        if pooled:
            profile = self._pool.profiles.get(str(pool_key))
            if profile is None or not self._pool.add(profile, sandbox):
                await self._discard(sandbox)  # that profile is gone or already full
                return "discarded"
            return "pooled"
        apply_notes(sandbox, notes)
        sandbox.notes = dict(notes)
        sandbox.touch()
        if datetime.now(UTC) >= sandbox.expires_at:
            detail = "its lifetime passed while the server was down"
            await self._finish(sandbox, EndReason.EXPIRED, detail)
            return "ended"
        if was_paused:
            await self._runtime.pause(container_id)
            sandbox.state = State.PAUSED
        log.info("recovered sandbox %s (container %s)", sandbox.id, container_id[:12])
        return "recovered"

    def _notes_message(self, sandbox: Sandbox, **notes: Any) -> dict[str, Any]:
        """A `note` for the agent: every note the server relies on, sealed (the agent is not
        trusted, so a restarted server believes only notes it can verify)."""
        sandbox.notes.update(notes)
        return {"type": "note", "notes": self._sealer.seal_notes(sandbox.id, sandbox.notes)}

    async def _note_expiry(self, sandbox: Sandbox) -> None:
        """Keep the expiry with the agent: labels are fixed, and keepalive moves it."""
        await sandbox.link.send_internal(
            self._notes_message(sandbox, expiresAt=sandbox.expires_at.timestamp())
        )

    # -- lookup -----------------------------------------------------------------------------

    def get(self, sandbox_id: str, tenant: Tenant, *, include_ended: bool = False) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None and include_ended:
            sandbox = self._ended.get(sandbox_id)
        # Someone else's sandbox looks exactly like one that does not exist.
        if sandbox is None or sandbox.owner != tenant.id:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    def list(self, tenant: Tenant, *, include_ended: bool = True) -> list[Sandbox]:
        found = [s for s in self._sandboxes.values() if s.owner == tenant.id]
        if include_ended:
            found += [s for s in self._ended.values() if s.owner == tenant.id]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    # -- create -----------------------------------------------------------------------------

    def _live_count(self, tenant_id: str) -> int:
        running = sum(1 for s in self._sandboxes.values() if s.owner == tenant_id)
        return running + self._creating.get(tenant_id, 0)

    def _admit(self, tenant: Tenant) -> None:
        """Check the tenant's quota and rate, synchronously: a burst cannot slip past."""
        cap = tenant.plan.max_sandboxes
        if cap is not None and self._live_count(tenant.id) >= cap:
            now = datetime.now(UTC)
            soonest = min(
                (
                    (s.expires_at - now).total_seconds()
                    for s in self._sandboxes.values()
                    if s.owner == tenant.id
                ),
                default=1.0,
            )
            raise QuotaExceeded(
                ErrorCode.QUOTA_EXCEEDED,
                f"at most {cap} live sandboxes; destroy one or wait for one to end",
                min(max(soonest, 1.0), 60.0),
            )
        self._create_rate.take(tenant)

    async def create(self, tenant: Tenant, options: SandboxOptions) -> Sandbox:
        self._admit(tenant)
        self._creating[tenant.id] = self._creating.get(tenant.id, 0) + 1
        try:
            return await self._create(tenant, options)
        finally:
            left = self._creating[tenant.id] - 1
            if left:
                self._creating[tenant.id] = left
            else:
                del self._creating[tenant.id]

    async def _create(self, tenant: Tenant, options: SandboxOptions) -> Sandbox:
        profile = self._pool.profile_for(options.template, options.resources)
        if profile is not None:
            pooled = self._pool.take(profile)
            if pooled is not None:
                try:
                    return await self._claim(pooled, tenant, options)
                except DockerError as exc:
                    log.warning("could not claim pooled sandbox %s: %s", pooled.id, exc)
                    await self._discard(pooled)
        sandbox = await self._launch(owner=tenant.id, options=options)
        sandbox.state = State.RUNNING
        sandbox.touch()
        self._sandboxes[sandbox.id] = sandbox
        log.info("created sandbox %s (container %s)", sandbox.id, sandbox.container_id[:12])
        return sandbox

    async def _launch(
        self, *, owner: str, options: SandboxOptions, pool_key: str | None = None
    ) -> Sandbox:
        """Create and start a container and wait for its agent's hello; not registered yet."""
        settings = self._settings
        created_at = datetime.now(UTC)
        # The sandbox's own `env` goes to the agent as a message (below), for user commands
        # only: the agent's process never runs with anything a tenant chose.
        environment = {
            "INSIEN_AGENT_MAX_LINE": str(settings.max_line_bytes),
            "INSIEN_AGENT_MAX_OUTPUT": str(settings.max_output_bytes),
            "INSIEN_AGENT_MAX_READ": str(settings.max_read_bytes),
            "INSIEN_AGENT_USER": settings.sandbox_user,
        }
        sandbox_id = new_sandbox_id()
        # Every label recovery reads is set here, whatever the image carries, and sealed.
        labels = self._sealer.seal_labels(
            {
                LABEL_SANDBOX_ID: sandbox_id,
                LABEL_OWNER: owner,
                LABEL_INSTANCE: settings.instance,
                LABEL_CREATED_AT: iso_timestamp(created_at),
                LABEL_TEMPLATE: options.template,
                LABEL_TIMEOUT: repr(options.timeout),
                LABEL_IDLE_TIMEOUT: repr(options.idle_timeout) if options.idle_timeout else "",
                LABEL_METADATA: json.dumps(options.metadata, separators=(",", ":")),
                LABEL_POOL: pool_key or "",
            }
        )
        spec = ContainerSpec(
            sandbox_id=sandbox_id,
            image=options.template,
            owner=owner,
            instance=settings.instance,
            created_at=labels[LABEL_CREATED_AT],
            template=options.template,
            python=options.python,
            network_mode=options.network,
            runtime=options.runtime,
            mem_limit=options.resources.memory,
            nano_cpus=int(options.resources.cpus * 1e9),
            pids_limit=options.resources.pids,
            environment=environment,
            capabilities=tuple(settings.capabilities),
            tmp_size=settings.tmp_size,
            disk_limit=settings.disk_limit,
            nofile=settings.nofile,
            extra_labels=labels,
        )
        container_id = await self._runtime.create(spec, self._agent_zip)
        try:
            # Attach before start so not one byte of the agent's output is missed.
            stream = await self._runtime.attach(container_id)
            link = AgentLink(
                stream, name=f"sandbox {spec.sandbox_id[:8]}", max_line=settings.max_line_bytes
            )
            if options.env:
                # Queued before the agent starts, so it is the first line the agent reads.
                link.send_internal_nowait({"type": "env", "env": options.env})
            sandbox = Sandbox(
                id=spec.sandbox_id,
                owner=owner,
                container_id=container_id,
                created_at=created_at,
                options=options,
                link=link,
                expires_at=created_at + timedelta(seconds=options.timeout),
            )
            await self._nursery.start(self._keep_link, sandbox)
            await self._runtime.start(container_id)
            with trio.move_on_after(settings.ready_timeout) as waited:
                await _first_of(link.ready.wait, link.closed.wait)
            if waited.cancelled_caught or not link.connected:
                reason = link.close_reason or f"no ready message within {settings.ready_timeout}s"
                raise SandboxStartError(f"sandbox agent did not start: {reason}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._runtime.remove(container_id)
            raise
        return sandbox

    # -- warm pool ----------------------------------------------------------------------------

    def pool_ready(self) -> int:
        """Sandboxes ready in the warm pools, all profiles together."""
        return sum(self._pool.counts().values())

    async def _claim(self, sandbox: Sandbox, tenant: Tenant, options: SandboxOptions) -> Sandbox:
        """Hand a pooled sandbox to a tenant.

        Its container is renamed to carry the owner, in the background to keep the hand-over
        fast. Until then a restart must not give it to anyone else: the `claimed` note is
        queued before any request of the new owner can reach the agent, and recovery removes
        a pooled container whose agent has that note but whose name names nobody.
        """
        now = datetime.now(UTC)
        sandbox.owner = tenant.id
        sandbox.options = options
        sandbox.created_at = now
        sandbox.expires_at = now + timedelta(seconds=options.timeout)
        note = self._notes_message(sandbox, claimed=True, **claim_notes(sandbox))
        # Queued ahead of any request of the new owner: the env its commands get, and the
        # notes that let a restart recognise the claim.
        for message in ([{"type": "env", "env": options.env}] if options.env else []) + [note]:
            if not sandbox.link.send_internal_nowait(message):
                await sandbox.link.send_internal(message)
        sandbox.state = State.RUNNING
        sandbox.touch()
        self._sandboxes[sandbox.id] = sandbox
        self._nursery.start_soon(self._rename_claimed, sandbox)
        log.info("claimed pooled sandbox %s for %s", sandbox.id, tenant.id)
        return sandbox

    async def _rename_claimed(self, sandbox: Sandbox) -> None:
        try:
            await self._runtime.rename(
                sandbox.container_id, self._sealer.claimed_name(sandbox.id, sandbox.owner)
            )
        except DockerError as exc:
            # Without the name a restart cannot tell whose it is, and would remove it.
            log.error("claimed sandbox %s could not be renamed: %s", sandbox.id, exc)

    async def _refill(self) -> None:
        """Keep every profile's pool at its size; wakes when a sandbox is taken."""
        async with trio.open_nursery() as fills:
            while True:
                changed = self._pool.changed
                # Starting a container takes a CPU for a quarter second: give the sandbox just
                # handed over its first commands before the pool competes with it.
                await trio.sleep(POOL_REFILL_DELAY)
                for profile in self._pool.profiles.values():
                    for _ in range(self._pool.shortfall(profile)):
                        self._pool.starting(profile, +1)
                        fills.start_soon(self._fill_one, profile)
                with trio.move_on_after(POOL_CHECK_INTERVAL):
                    await changed.wait()

    async def _fill_one(self, profile: Profile) -> None:
        isolation = self._settings.isolation(profile.template)
        options = SandboxOptions(
            template=profile.template,
            timeout=self._settings.default_timeout,
            idle_timeout=self._settings.default_idle_timeout,
            resources=profile.resources,
            runtime=isolation.runtime,
            network=isolation.network,
            python=isolation.python,
        )
        # The slot counts as "starting" until the sandbox is in the pool (or gone): counted
        # neither ready nor starting for a moment, it would make the refill start another.
        try:
            try:
                sandbox = await self._launch(owner="", options=options, pool_key=profile.key)
            except (DockerError, SandboxStartError) as exc:
                log.warning("warm pool %s: %s", profile.template, exc)
                await trio.sleep(POOL_RETRY_DELAY)  # keeps this slot "starting": no busy retry
                return
            # One command through every code path (spawn, pipes, the file cache of the image),
            # so that the first one after the hand-over runs at full speed.
            with trio.move_on_after(10):
                await sandbox.link.call({"type": "exec", "cmd": "true"})
            if not self._pool.add(profile, sandbox):
                await self._discard(sandbox)
        finally:
            self._pool.starting(profile, -1)

    async def _discard(self, sandbox: Sandbox) -> None:
        sandbox.end(EndReason.DESTROYED, "not needed in the pool")
        sandbox.scope.cancel()
        with trio.CancelScope(shield=True):
            await self._runtime.remove(sandbox.container_id)

    async def _keep_link(self, sandbox: Sandbox, *, task_status: trio.TaskStatus[None]) -> None:
        with sandbox.scope:
            await sandbox.link.run(task_status=task_status)
        if sandbox.scope.cancelled_caught or sandbox.state is State.ENDED:
            return
        if sandbox.link.protocol_error:
            reason = EndReason.AGENT_PROTOCOL_ERROR
        else:
            reason = await self._why_it_ended(sandbox)
        log.warning("sandbox %s ended: %s (%s)", sandbox.id, reason, sandbox.link.close_reason)
        await self._finish(sandbox, reason, sandbox.link.close_reason)

    async def _why_it_ended(self, sandbox: Sandbox) -> EndReason:
        """The agent's stream ended by itself: ask Docker what became of the container."""
        state: dict[str, object] = {}
        with trio.move_on_after(2):
            while True:
                info = await self._runtime.inspect(sandbox.container_id)
                if info is None:
                    return EndReason.CONTAINER_GONE
                state = info.get("State", {})
                if state.get("Status") in ("removing", "dead"):
                    return EndReason.CONTAINER_GONE
                if not state.get("Running"):
                    break
                await trio.sleep(0.1)  # the stream closed a moment before Docker noticed
        if state.get("OOMKilled"):
            return EndReason.OOM
        return EndReason.AGENT_EXITED

    # -- lifetime -----------------------------------------------------------------------------

    def keepalive(self, sandbox_id: str, tenant: Tenant, timeout: float | None) -> Sandbox:
        """Extend a sandbox's life: `timeout` seconds from now (default: its own timeout)."""
        sandbox = self.get(sandbox_id, tenant)
        seconds = min(timeout or sandbox.options.timeout, self._settings.max_timeout)
        sandbox.extend(seconds)
        sandbox.touch()
        self._nursery.start_soon(self._note_expiry, sandbox)
        return sandbox

    async def _reap(self) -> None:
        while True:
            await trio.sleep(REAP_INTERVAL)
            now = datetime.now(UTC)
            for sandbox in list(self._sandboxes.values()):
                if sandbox.state not in (State.RUNNING, State.PAUSED):
                    continue
                if now >= sandbox.expires_at:
                    self._nursery.start_soon(self._finish, sandbox, EndReason.EXPIRED, "")
                elif (
                    sandbox.state is State.RUNNING  # a paused sandbox never goes idle
                    and sandbox.options.idle_timeout is not None
                    and sandbox.idle_seconds() >= sandbox.options.idle_timeout
                ):
                    self._nursery.start_soon(self._finish, sandbox, EndReason.IDLE, "")
            self._forget_old(now)

    def _forget_old(self, now: datetime) -> None:
        horizon = now - timedelta(seconds=self._settings.ended_retention)
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if len(self._ended) <= MAX_ENDED_KEPT and (oldest.ended_at or now) > horizon:
                break
            self._ended.popitem(last=False)

    # -- pause, resume, snapshot ---------------------------------------------------------------

    async def pause(self, sandbox_id: str, tenant: Tenant) -> Sandbox:
        """Freeze every process in the sandbox: no CPU, no idle expiry (its lifetime still runs)."""
        sandbox = self.get(sandbox_id, tenant)
        if sandbox.state is State.RUNNING:
            await self._runtime.pause(sandbox.container_id)
            sandbox.state = State.PAUSED
        return sandbox

    async def resume(self, sandbox_id: str, tenant: Tenant) -> Sandbox:
        sandbox = self.get(sandbox_id, tenant)
        if sandbox.state is State.PAUSED:
            await self._runtime.unpause(sandbox.container_id)
            sandbox.state = State.RUNNING
        sandbox.touch()
        return sandbox

    async def snapshot(self, sandbox_id: str, tenant: Tenant) -> str:
        """Commit the sandbox's filesystem as a template only its owner can create from,
        within the tenant's plan (snapshots kept, and the bytes their own layers add)."""
        sandbox = self.get(sandbox_id, tenant)
        async with self._snapshot_lock:  # a burst of snapshots cannot slip past the quota
            kept = await self.snapshots(tenant)
            plan = tenant.plan
            if plan.max_snapshots is not None and len(kept) >= plan.max_snapshots:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"at most {plan.max_snapshots} snapshots; delete one (DELETE /snapshots/…)",
                    60.0,
                )
            size = await self._runtime.writable_size(sandbox.container_id)
            used = sum(int(snap["bytes"]) for snap in kept)
            if plan.max_snapshot_bytes is not None and used + size > plan.max_snapshot_bytes:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"snapshots may hold {plan.max_snapshot_bytes} bytes; {used} are used and "
                    f"this one would add {size}",
                    60.0,
                )
            name = f"{SNAPSHOT_REPOSITORY}:{secrets.token_hex(8)}"
            repository, tag = name.split(":")
            labels = {
                SNAPSHOT_OWNER_LABEL: tenant.id,
                SNAPSHOT_INSTANCE_LABEL: self._settings.instance,
                SNAPSHOT_SOURCE_LABEL: sandbox.id,
                SNAPSHOT_BYTES_LABEL: str(size),
                # A snapshot is isolated like the operator's template it descends from.
                SNAPSHOT_BASE_LABEL: await self._base_template(sandbox.options.template),
            }
            await self._runtime.commit(sandbox.container_id, repository, tag, labels)
        sandbox.touch()
        log.info("snapshot %s of sandbox %s (%d bytes)", name, sandbox.id, size)
        return name

    async def snapshots(self, tenant: Tenant) -> builtins.list[dict[str, Any]]:
        """The tenant's snapshot templates, oldest first."""
        images = await self._runtime.images_labelled(f"{SNAPSHOT_OWNER_LABEL}={tenant.id}")
        found = []
        for image in images:
            labels = image.get("Labels") or {}
            if labels.get(SNAPSHOT_INSTANCE_LABEL) != self._settings.instance:
                continue
            for tag in image.get("RepoTags") or []:
                if tag.startswith(f"{SNAPSHOT_REPOSITORY}:"):
                    found.append(
                        {
                            "template": tag,
                            "sandboxId": labels.get(SNAPSHOT_SOURCE_LABEL),
                            "createdAt": iso_timestamp(
                                datetime.fromtimestamp(int(image.get("Created", 0)), UTC)
                            ),
                            "bytes": int(labels.get(SNAPSHOT_BYTES_LABEL) or 0),
                        }
                    )
        return sorted(found, key=lambda snap: (snap["createdAt"], snap["template"]))

    async def delete_snapshot(self, tenant: Tenant, template: str) -> None:
        """Remove one of the tenant's snapshots; anyone else's looks like none (NotFound)."""
        if template not in {snap["template"] for snap in await self.snapshots(tenant)}:
            raise SandboxNotFound(template)
        await self._runtime.remove_image(template)
        log.info("snapshot %s deleted by %s", template, tenant.id)

    async def _purge_snapshots(self) -> None:
        """Snapshots of tenants that are gone from the tenants file go with them."""
        while True:
            images = await self._runtime.images_labelled(
                f"{SNAPSHOT_INSTANCE_LABEL}={self._settings.instance}"
            )
            for image in images:
                owner = (image.get("Labels") or {}).get(SNAPSHOT_OWNER_LABEL, "")
                if owner and not self._tenant_exists(owner):
                    for tag in image.get("RepoTags") or []:
                        if tag.startswith(f"{SNAPSHOT_REPOSITORY}:"):
                            log.info("removing snapshot %s: tenant %s is gone", tag, owner)
                            await self._runtime.remove_image(tag)
            await trio.sleep(SNAPSHOT_PURGE_INTERVAL)

    async def _base_template(self, template: str) -> str:
        if template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            labels = await self._runtime.image_labels(template) or {}
            return labels.get(SNAPSHOT_BASE_LABEL, self._settings.agent_image)
        return template

    async def _purge_snapshots_safely(self) -> None:
        while True:
            try:
                await self._purge_snapshots()
            except DockerError as exc:
                log.warning("snapshot purge: %s", exc)
            await trio.sleep(SNAPSHOT_PURGE_INTERVAL)

    async def resolve_template(self, template: str, tenant: Tenant) -> Isolation | None:
        """How sandboxes of a template this tenant may use run; None if it may not.

        The operator's images, or a snapshot that this tenant made (isolated like its base).
        """
        if template in self._settings.allowed_templates:
            return self._settings.isolation(template)
        if not template.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            return None
        labels = await self._runtime.image_labels(template)
        if labels is None or labels.get(SNAPSHOT_OWNER_LABEL) != tenant.id:
            return None
        if labels.get(SNAPSHOT_INSTANCE_LABEL) != self._settings.instance:
            return None
        base = labels.get(SNAPSHOT_BASE_LABEL, self._settings.agent_image)
        return self._settings.isolation(base)

    # -- end --------------------------------------------------------------------------------

    async def destroy(self, sandbox_id: str, tenant: Tenant) -> None:
        sandbox = self.get(sandbox_id, tenant)
        await self._finish(sandbox, EndReason.DESTROYED, "")

    async def _finish(self, sandbox: Sandbox, reason: EndReason, detail: str) -> None:
        """End a sandbox once: record why, stop its link, remove its container."""
        if not sandbox.end(reason, detail):
            return
        self._sandboxes.pop(sandbox.id, None)
        if sandbox.owner:  # a pooled sandbox that died never belonged to anyone
            self._ended[sandbox.id] = sandbox
        sandbox.scope.cancel()
        with trio.CancelScope(shield=True):
            await self._runtime.remove(sandbox.container_id)
        log.info("sandbox %s ended: %s", sandbox.id, reason)

    async def end_all(self, reason: EndReason) -> None:
        async with trio.open_nursery() as nursery:
            for sandbox in list(self._sandboxes.values()):
                nursery.start_soon(self._finish, sandbox, reason, "")
            for pooled in self._pool.members():
                nursery.start_soon(self._discard, pooled)


async def _first_of(*waiters: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of the waiters returns."""
    async with trio.open_nursery() as nursery:

        async def wait_then_stop(waiter: Callable[[], Awaitable[object]]) -> None:
            await waiter()
            nursery.cancel_scope.cancel()

        for waiter in waiters:
            nursery.start_soon(wait_then_stop, waiter)
