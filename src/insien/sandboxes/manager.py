"""The sandbox registry and lifecycle: create (cold or from the warm pool), find, keep alive,
pause, and end, with a reaper for lifetimes and idle time.

The manager owns one nursery: every sandbox's link runs there in its own cancel scope, beside
the reaper, the pool's refill and the snapshot purge. Ended sandboxes stay queryable for a
retention period. The runtime is the source of truth for what exists: at start-up the
registry is rebuilt from it (`recovery`).

Long because create, claim, pause/resume and end all change the one registry under its
invariants; launching, recovery, the pool, snapshots, volumes and egress are modules of their
own. Next seam: pause and resume (with their manifest checks) into a module.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import trio

from ..config import Settings
from ..egress import NetworkPolicy
from ..link import AgentLink
from ..operations import events
from ..operations.events import EventLog
from ..operations.logs import long_lived_task
from ..operations.metrics import LiveState, Metrics
from ..protocol import ErrorCode
from ..runtime.base import Pausable, Runtime, RuntimeFailure, Stoppable
from ..tenancy.quotas import CreateRateLimiter, QuotaExceeded
from ..tenancy.resources import parse_size
from ..tenancy.tenants import Tenant
from .egress import Egress
from .errors import not_supported
from .launcher import Launcher, SandboxStartError, first_of
from .pool import WarmPool, profiles_of
from .provenance import Sealer
from .records import notes_message
from .recovery import RecoveryReport, recover
from .sandbox import EndReason, Sandbox, SandboxOptions, State
from .snapshots import Manifest, Snapshots
from .usage import UsageSampler
from .volumes import Volumes

log = logging.getLogger("insien.manager")

REAP_INTERVAL = 0.5
MAX_ENDED_KEPT = 1000

__all__ = ["SandboxManager", "SandboxNotFound", "SandboxStartError"]


class SandboxNotFound(Exception):
    """No such sandbox for this caller (absent, ended, or owned by someone else)."""


class SandboxManager:
    """Creates, finds and ends sandboxes. Use `async with SandboxManager.open(...)`."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        nursery: trio.Nursery,
        sealer: Sealer,
        tenant_exists: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.sealer = sealer
        self._nursery = nursery
        self._sandboxes: dict[str, Sandbox] = {}
        self._ended: OrderedDict[str, Sandbox] = OrderedDict()
        self._creating: dict[str, int] = {}  # tenant id -> creates under way
        self._create_rate = CreateRateLimiter()
        self.launcher = Launcher(runtime, settings, sealer, self.start_link)
        self.pool = WarmPool(
            profiles_of(settings),
            runtime=runtime,
            settings=settings,
            sealer=sealer,
            launcher=self.launcher,
            discard=self.discard,
        )
        self.snapshots = Snapshots(runtime, settings, tenant_exists, sealer)
        self.volumes = Volumes(runtime, settings, sealer, tenant_exists)
        self.recovery = RecoveryReport()
        disk_limit = parse_size(settings.disk_limit) if settings.disk_limit else 0
        tmp_size = parse_size(settings.tmp_size)
        self.usage = UsageSampler(runtime, disk_limit, nursery, tmp_size=tmp_size)
        self.egress = Egress(settings)
        self.events = EventLog(settings.events_kept)
        """Lifecycle events, for `GET /events` and webhooks (operations/events.py)."""
        self.egress.events = self.events  # `secret.used` (issue 30)
        self.metrics = Metrics(tenant_labels=settings.metrics_tenant_labels)
        self.metrics.read_live_state_from(self.live_state)
        self._traffic_of_ended: dict[tuple[str, str], int] = {}
        self._operator_templates = set(settings.allowed_templates)
        self._transitions: dict[str, trio.Lock] = {}
        """Per sandbox: one pause or resume at a time (traffic may wake it many times at once)."""
        self._stopped: set[str] = set()
        """Paused sandboxes whose container is stopped (no memory kept): a resume boots them."""
        self._manifests: dict[str, Manifest] = {}
        """What a stopped sandbox's files were at its pause, for its boot to be checked against
        (kept in memory: a resume after a server restart is not checked)."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        runtime: Runtime,
        settings: Settings,
        sealer: Sealer,
        tenant_exists: Callable[[str], bool] = lambda _: True,
    ) -> AsyncIterator[SandboxManager]:
        async with trio.open_nursery() as nursery:
            manager = cls(runtime, settings, nursery, sealer, tenant_exists)
            manager.recovery = await recover(manager)
            for outcome, count in manager.recovery.outcomes.items():
                manager.metrics.recovered.labels(outcome).set(count)
            nursery.start_soon(manager._reap)
            nursery.start_soon(manager.snapshots.purge_forever)
            nursery.start_soon(manager.volumes.purge_forever)
            nursery.start_soon(manager.pool.keep_filled)
            try:
                yield manager
            finally:
                manager.pool.close()  # nothing starts once shutdown has begun
                with trio.CancelScope(shield=True):
                    if settings.shutdown_ends_sandboxes:
                        await manager.end_all(EndReason.SHUTDOWN)
                    else:
                        manager.detach_all()
                nursery.cancel_scope.cancel()

    def detach_all(self) -> None:
        """Let go of every sandbox without ending any: the next start recovers them."""
        self.pool.close()
        for sandbox in [*self._sandboxes.values(), *self.pool.members()]:
            sandbox.link.detach()
            sandbox.scope.cancel()

    # -- the registry, as recovery and the fronts use it ----------------------------------------

    def register(self, sandbox: Sandbox) -> None:
        self._sandboxes[sandbox.id] = sandbox

    def remember_ended(self, sandbox: Sandbox) -> None:
        self._ended[sandbox.id] = sandbox

    async def start_link(self, sandbox: Sandbox) -> None:
        """Run the sandbox's link in the manager's nursery; returns once it runs."""
        sandbox.link.on_request_done = self.metrics.request_done
        await self._nursery.start(self._keep_link, sandbox)

    def get(self, sandbox_id: str, tenant: Tenant, *, include_ended: bool = False) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None and include_ended:
            sandbox = self._ended.get(sandbox_id)
        # Someone else's sandbox looks exactly like one that does not exist.
        if sandbox is None or sandbox.owner != tenant.id:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    def public(self, sandbox_id: str) -> Sandbox | None:
        """A sandbox whose ports answer anyone (`allowPublicTraffic`), else None."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.owner:
            return None
        return sandbox if sandbox.options.network_policy.allow_public_traffic else None

    def list(self, tenant: Tenant, *, include_ended: bool = True) -> list[Sandbox]:
        found = [s for s in self._sandboxes.values() if s.owner == tenant.id]
        if include_ended:
            found += [s for s in self._ended.values() if s.owner == tenant.id]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def pool_ready(self) -> int:
        """Sandboxes ready in the warm pools, all profiles together."""
        return sum(self.pool.counts().values())

    # -- what operators watch -----------------------------------------------------------------

    def template_label(self, template: str) -> str:
        """A template as a metrics label: the operator's names, `snapshot` for the rest (a
        label per snapshot would grow without bound)."""
        return template if template in self._operator_templates else "snapshot"

    def live_state(self) -> LiveState:
        """What `/metrics` reads at scrape time."""
        traffic = dict(self._traffic_of_ended)
        members = self.pool.members()
        for sandbox in [*self._sandboxes.values(), *members]:
            for key, total in sandbox.link.traffic.items():
                traffic[key] = traffic.get(key, 0) + total
        pool_ready: dict[str, int] = {}
        for sandbox in members:
            label = self.template_label(sandbox.options.template)
            pool_ready[label] = pool_ready.get(label, 0) + 1
        totals = self.egress.totals()
        return LiveState(
            sandboxes=[
                (s.state.value, self.template_label(s.options.template), s.owner)
                for s in self._sandboxes.values()
            ],
            pool_ready=pool_ready,
            traffic=traffic,
            egress={"out": totals.bytes_out, "in": totals.bytes_in},
            events=self.events.published,
        )

    def _fold_traffic(self, sandbox: Sandbox) -> None:
        """Keep an ending sandbox's byte counts in the server's totals."""
        for key, total in sandbox.link.traffic.items():
            self._traffic_of_ended[key] = self._traffic_of_ended.get(key, 0) + total
        sandbox.link.traffic.clear()

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
                "sandboxes",
            )
        self._create_rate.take(tenant)

    async def create(self, tenant: Tenant, options: SandboxOptions) -> Sandbox:
        if options.on_expiry == "pause" and not isinstance(self.runtime, Pausable):
            raise not_supported(self.runtime, "pausing a sandbox at the end of its lifetime")
        if options.on_expiry == "stop" and not isinstance(self.runtime, Stoppable):
            raise not_supported(
                self.runtime, "pausing a sandbox without its memory at the end of its lifetime"
            )
        try:
            self._admit(tenant)
        except QuotaExceeded as refused:
            self.metrics.creates.labels("quota", "none").inc()
            self.metrics.quota_refusals.labels(refused.reason).inc()
            self.events.publish(
                events.QUOTA_REFUSED,
                tenant.id,
                None,
                reason=refused.reason,
                message=refused.message,
            )
            raise
        self._creating[tenant.id] = self._creating.get(tenant.id, 0) + 1
        started = trio.current_time()
        source = "cold"
        try:
            sandbox, source = await self._create(tenant, options)
        except BaseException:
            self.metrics.creates.labels("error", source).inc()
            raise
        else:
            seconds = trio.current_time() - started
            self.metrics.creates.labels("ok", source).inc()
            self.metrics.create_seconds.labels(source).observe(seconds)
            self.events.publish(
                events.READY, tenant.id, sandbox.id, source=source, seconds=round(seconds, 4)
            )
            return sandbox
        finally:
            left = self._creating[tenant.id] - 1
            if left:
                self._creating[tenant.id] = left
            else:
                del self._creating[tenant.id]

    async def _create(self, tenant: Tenant, options: SandboxOptions) -> tuple[Sandbox, str]:
        """The sandbox, and where it came from (`pool` or `cold`)."""
        # A pooled sandbox was made without volumes: one that mounts any starts cold.
        pooled_kind = not options.volumes
        profile = (
            self.pool.profile_for(options.template, options.resources) if pooled_kind else None
        )
        pooled = self.pool.take(profile) if profile is not None else None
        if profile is not None and pooled is None:
            self.metrics.pool_misses.labels(self.template_label(options.template)).inc()
        if pooled is not None:
            self.register(pooled)
            try:
                claimed = await self.pool.hand_over(pooled, tenant, options, self._nursery)
                self._created(claimed, "pool")
                await self.apply_network(claimed)
                return claimed, "pool"
            except RuntimeFailure as exc:
                log.warning("could not claim pooled sandbox %s: %s", pooled.id, exc)
                self._sandboxes.pop(pooled.id, None)
                await self.discard(pooled)
        sandbox = await self.launcher.launch(owner=tenant.id, options=options)
        sandbox.state = State.RUNNING
        sandbox.touch()
        self.register(sandbox)
        try:  # a sandbox from a snapshot holds what the snapshot's manifest says, or ends
            await self.snapshots.verify_created(sandbox)
        except RuntimeFailure as exc:
            await self.finish(sandbox, EndReason.ERROR, str(exc))
            raise
        self._created(sandbox, "cold")
        # What labels cannot say, the agent keeps as a sealed note for a restarted server.
        notes: dict[str, object] = {}
        if options.on_expiry != "end":
            notes["onExpiry"] = options.on_expiry
        if options.auto_resume:
            notes["autoResume"] = True
        if options.mask_request_host is not None:
            notes["maskRequestHost"] = options.mask_request_host
        if options.network_policy != NetworkPolicy():
            notes["network"] = options.network_policy.to_json()
        if notes:
            await sandbox.link.send_internal(notes_message(self.sealer, sandbox, **notes))
        await self.apply_network(sandbox)
        log.info("created sandbox %s (container %s)", sandbox.id, sandbox.container_id[:12])
        return sandbox, "cold"

    def _created(self, sandbox: Sandbox, source: str) -> None:
        self.events.publish(
            events.CREATED,
            sandbox.owner,
            sandbox.id,
            template=sandbox.options.template,
            source=source,
            metadata=dict(sandbox.options.metadata),
        )

    # -- each sandbox's link --------------------------------------------------------------------

    async def _keep_link(self, sandbox: Sandbox, *, task_status: trio.TaskStatus[None]) -> None:
        long_lived_task(sandbox.id, sandbox.owner or None)
        # A stopped sandbox's next boot brings a new link and scope: this task keeps its own.
        scope, link = sandbox.scope, sandbox.link
        with scope:
            await link.run(task_status=task_status)
        if scope.cancelled_caught or sandbox.state is State.ENDED or sandbox.link is not link:
            return
        if sandbox.link.protocol_error:
            reason = EndReason.AGENT_PROTOCOL_ERROR
        else:
            reason = await self._why_it_ended(sandbox)
        log.warning("sandbox %s ended: %s (%s)", sandbox.id, reason, sandbox.link.close_reason)
        await self.finish(sandbox, reason, sandbox.link.close_reason)

    async def _why_it_ended(self, sandbox: Sandbox) -> EndReason:
        """The agent's stream ended by itself: ask the runtime what became of the container."""
        oom = False
        with trio.move_on_after(2):
            while True:
                info = await self.runtime.inspect(sandbox.container_id)
                if info is not None and info.evicted:
                    return EndReason.EVICTED
                if info is None or info.gone:
                    return EndReason.CONTAINER_GONE
                oom = info.oom_killed
                if not info.running:
                    break
                await trio.sleep(0.1)  # the stream closed a moment before the runtime noticed
        return EndReason.OOM if oom else EndReason.AGENT_EXITED

    # -- network ----------------------------------------------------------------------------

    async def apply_network(self, sandbox: Sandbox) -> None:
        """Start or stop the sandbox's egress proxy to match its policy."""
        await self.egress.apply(sandbox, self._nursery)

    async def update_network(
        self, sandbox_id: str, tenant: Tenant, policy: NetworkPolicy
    ) -> Sandbox:
        """Replace a running sandbox's policy: new connections are decided by it (open ones
        stay), and a restarted server keeps it (a sealed note)."""
        sandbox = self.get(sandbox_id, tenant)
        sandbox.options = replace(sandbox.options, network_policy=policy)
        note = notes_message(self.sealer, sandbox, network=policy.to_json())
        await sandbox.link.send_internal(note)
        if sandbox.state is State.RUNNING:  # a paused agent answers nothing: resume applies it
            await self.apply_network(sandbox)
        sandbox.touch()
        return sandbox

    # -- lifetime -----------------------------------------------------------------------------

    def keepalive(self, sandbox_id: str, tenant: Tenant, timeout: float | None) -> Sandbox:
        """Extend a sandbox's life: `timeout` seconds from now (default: its own timeout)."""
        sandbox = self.get(sandbox_id, tenant)
        seconds = min(timeout or sandbox.options.timeout, self.settings.max_timeout)
        sandbox.extend(seconds)
        sandbox.touch()
        self._nursery.start_soon(self._note_expiry, sandbox)
        return sandbox

    async def _note_expiry(self, sandbox: Sandbox) -> None:
        """Keep the expiry with the agent: labels are fixed, and keepalive moves it."""
        note = notes_message(self.sealer, sandbox, expiresAt=sandbox.expires_at.timestamp())
        await sandbox.link.send_internal(note)

    async def _reap(self) -> None:
        while True:
            await trio.sleep(REAP_INTERVAL)
            now = datetime.now(UTC)
            for sandbox in list(self._sandboxes.values()):
                if sandbox.state not in (State.RUNNING, State.PAUSED):
                    continue
                if now >= sandbox.expires_at:
                    on_expiry = sandbox.options.on_expiry
                    if sandbox.state is State.RUNNING and (
                        (on_expiry == "pause" and isinstance(self.runtime, Pausable))
                        or (on_expiry == "stop" and isinstance(self.runtime, Stoppable))
                    ):  # else it ends: see `create`
                        self._pause_expired(sandbox, memory=on_expiry == "pause")
                    else:
                        self._nursery.start_soon(self.finish, sandbox, EndReason.EXPIRED, "")
                elif (
                    sandbox.state is State.RUNNING  # a paused sandbox never goes idle
                    and sandbox.options.idle_timeout is not None
                    and sandbox.idle_seconds() >= sandbox.options.idle_timeout
                ):
                    self._nursery.start_soon(self.finish, sandbox, EndReason.IDLE, "")
            self._forget_old(now)

    def _pause_expired(self, sandbox: Sandbox, *, memory: bool) -> None:
        """A sandbox that pauses at the end of its life: frozen (or stopped, without `memory`)
        now, ended if nobody resumes it within INSIEN_MAX_TIMEOUT (a resume gives it its own
        timeout again)."""
        sandbox.extend(self.settings.max_timeout)
        self._nursery.start_soon(self._note_expiry, sandbox)

        async def freeze() -> None:
            try:
                await self._pause(sandbox, memory=memory)
            except RuntimeFailure as exc:
                log.warning("could not pause expired sandbox %s: %s", sandbox.id, exc)

        self._nursery.start_soon(freeze)

    def _forget_old(self, now: datetime) -> None:
        horizon = now - timedelta(seconds=self.settings.ended_retention)
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if len(self._ended) <= MAX_ENDED_KEPT and (oldest.ended_at or now) > horizon:
                break
            self._ended.popitem(last=False)

    async def pause(self, sandbox_id: str, tenant: Tenant, *, memory: bool = True) -> Sandbox:
        """Freeze every process in the sandbox: no CPU, no idle expiry (its lifetime still runs).
        Without `memory`, stop its container instead (files kept; a resume boots it anew)."""
        sandbox = self.get(sandbox_id, tenant)
        await self._pause(sandbox, memory=memory)
        return sandbox

    def is_stopped(self, sandbox: Sandbox) -> bool:
        """Whether the sandbox is paused without its memory (its container stopped)."""
        return sandbox.id in self._stopped

    def _transition(self, sandbox: Sandbox) -> trio.Lock:
        return self._transitions.setdefault(sandbox.id, trio.Lock())

    async def _pause(self, sandbox: Sandbox, *, memory: bool) -> None:
        if not memory:
            stoppable = self._stoppable("pausing a sandbox without its memory")
        async with self._transition(sandbox):
            if sandbox.state is not State.RUNNING:
                return
            if memory:
                await self._freeze(sandbox)
                return
            # Its processes end first (the stop would end them anyway), so the manifest is
            # what the stop keeps; a sandbox whose code runs as the agent has none to end.
            await sandbox.link.call({"type": "killAll"})
            recorded = await Manifest.of(sandbox)
            if recorded is not None:
                self._manifests[sandbox.id] = recorded
            # The link's task sees its scope cancelled and leaves the sandbox be (_keep_link).
            sandbox.state = State.PAUSED
            self._stopped.add(sandbox.id)
            sandbox.scope.cancel()
            self.egress.stop(sandbox.id)
            await stoppable.stop(sandbox.container_id)
            self.events.publish(events.PAUSED, sandbox.owner, sandbox.id, memory=False)

    def _stoppable(self, doing: str) -> Stoppable:
        """The runtime's `Stoppable` capability; NOT_SUPPORTED for `doing` if it has none."""
        if isinstance(self.runtime, Stoppable):
            return self.runtime
        raise not_supported(self.runtime, doing)

    def _pausable(self, doing: str) -> Pausable:
        """The runtime's `Pausable` capability; NOT_SUPPORTED for `doing` if it has none."""
        if isinstance(self.runtime, Pausable):
            return self.runtime
        raise not_supported(self.runtime, doing)

    async def _freeze(self, sandbox: Sandbox) -> None:
        if sandbox.state is State.RUNNING:
            await self._pausable("pausing a sandbox").pause(sandbox.container_id)
            sandbox.state = State.PAUSED
            self.events.publish(events.PAUSED, sandbox.owner, sandbox.id)

    async def resume(self, sandbox_id: str, tenant: Tenant, *, memory: bool = True) -> Sandbox:
        """Thaw a paused sandbox, or boot a stopped one again on its files. Without `memory`
        even a frozen one is booted anew (E2B's `on_resume="reboot"`)."""
        sandbox = self.get(sandbox_id, tenant)
        await self._resume(sandbox, memory=memory)
        sandbox.touch()
        return sandbox

    async def resume_for_traffic(self, sandbox: Sandbox) -> bool:
        """Traffic for a paused sandbox's ports or envd: resume it if its options allow
        (`auto_resume`, E2B's autoResume); False if it stays paused. Only a frozen sandbox
        wakes this way: one stopped without its memory needs an explicit resume, as in E2B.
        A woken sandbox gets its own timeout again, as a connect gives it."""
        if sandbox.state is State.PAUSED:
            if not sandbox.options.auto_resume or self.is_stopped(sandbox):
                return False
            await self._resume(sandbox, memory=True)
            if self._running(sandbox):
                sandbox.extend(min(sandbox.options.timeout, self.settings.max_timeout))
                self._nursery.start_soon(self._note_expiry, sandbox)
            sandbox.touch()
        return self._running(sandbox)

    @staticmethod
    def _running(sandbox: Sandbox) -> bool:
        """Its state now (a helper, so a check after an `await` is not narrowed away)."""
        return sandbox.state is State.RUNNING

    async def _resume(self, sandbox: Sandbox, *, memory: bool) -> None:
        async with self._transition(sandbox):
            if sandbox.state is not State.PAUSED:
                return
            if sandbox.id not in self._stopped and memory:
                await self._pausable("resuming a paused sandbox").unpause(sandbox.container_id)
            else:
                stoppable = self._stoppable("booting a paused sandbox without its memory")
                if sandbox.id not in self._stopped:  # frozen, to be booted anew
                    await self._pausable("resuming a paused sandbox").unpause(sandbox.container_id)
                    sandbox.scope.cancel()
                    self.egress.stop(sandbox.id)
                    await stoppable.stop(sandbox.container_id)
                    self._stopped.add(sandbox.id)
                await self._boot_again(sandbox)
                self._stopped.discard(sandbox.id)
            sandbox.state = State.RUNNING
            self.events.publish(events.RESUMED, sandbox.owner, sandbox.id)
            await self.apply_network(sandbox)
            recorded = self._manifests.pop(sandbox.id, None)
            if recorded is not None:
                # It runs on with what it has (nothing more is lost by ending it), and the
                # resume answers an error naming what is missing or different.
                recorded.check_against(
                    await Manifest.of(sandbox), f"sandbox {sandbox.id} after its pause"
                )

    async def _boot_again(self, sandbox: Sandbox) -> None:
        """Start a stopped sandbox's container again with a new link to its new agent: its
        env first, then the notes the old agent kept (sealed again). A boot that fails ends
        the sandbox (SandboxStartError)."""
        settings = self.settings
        self._fold_traffic(sandbox)
        try:
            channel = await self.runtime.attach(sandbox.container_id)
        except RuntimeFailure as exc:
            await self.finish(sandbox, EndReason.ERROR, f"could not boot it again: {exc}")
            raise SandboxStartError(f"sandbox could not boot again: {exc}") from exc
        link = AgentLink(
            channel,
            name=f"sandbox {sandbox.id[:8]}",
            max_line=settings.max_line_bytes,
            resume_after=None if self.runtime.attach_from_start else 0,
        )
        if sandbox.options.env:
            link.send_internal_nowait({"type": "env", "env": sandbox.options.env})
        sandbox.link = link
        sandbox.scope = trio.CancelScope()
        await self.start_link(sandbox)
        try:
            await self.runtime.start(sandbox.container_id)
        except RuntimeFailure as exc:
            await self.finish(sandbox, EndReason.ERROR, f"could not boot it again: {exc}")
            raise SandboxStartError(f"sandbox could not boot again: {exc}") from exc
        with trio.move_on_after(settings.ready_timeout):
            await first_of(link.ready.wait, link.closed.wait)
        if not link.connected:
            why = link.close_reason or f"no ready message within {settings.ready_timeout}s"
            await self.finish(sandbox, EndReason.ERROR, f"did not boot again: {why}")
            raise SandboxStartError(f"sandbox agent did not start again: {why}")
        if sandbox.notes:
            await link.send_internal(notes_message(self.sealer, sandbox))

    async def snapshot(self, sandbox_id: str, tenant: Tenant, name: str | None = None) -> str:
        """Commit the sandbox's filesystem as a template only its owner can create from
        (named, if `name` is given: see Snapshots.take)."""
        sandbox = self.get(sandbox_id, tenant)
        try:
            template = await self.snapshots.take(sandbox, tenant, name)
        except QuotaExceeded as refused:
            self.metrics.quota_refusals.labels(refused.reason).inc()
            self.events.publish(
                events.QUOTA_REFUSED,
                tenant.id,
                sandbox.id,
                reason=refused.reason,
                message=refused.message,
            )
            raise
        self.events.publish(events.SNAPSHOT, tenant.id, sandbox.id, template=template)
        sandbox.touch()
        return template

    # -- end --------------------------------------------------------------------------------

    async def destroy(self, sandbox_id: str, tenant: Tenant) -> None:
        await self.finish(self.get(sandbox_id, tenant), EndReason.DESTROYED, "")

    async def finish(self, sandbox: Sandbox, reason: EndReason, detail: str) -> None:
        """End a sandbox once: record why, stop its link, remove its container."""
        if not sandbox.end(reason, detail):
            return
        self._fold_traffic(sandbox)
        self.metrics.ended.labels(reason.value).inc()
        if sandbox.owner:
            self.events.publish(
                events.ENDED, sandbox.owner, sandbox.id, reason=reason.value, detail=detail
            )
        self._sandboxes.pop(sandbox.id, None)
        self._transitions.pop(sandbox.id, None)
        self._stopped.discard(sandbox.id)
        self._manifests.pop(sandbox.id, None)
        self.usage.forget(sandbox.id)
        self.egress.stop(sandbox.id)
        if sandbox.owner:  # a pooled sandbox that died never belonged to anyone
            self._ended[sandbox.id] = sandbox
        sandbox.scope.cancel()
        with trio.CancelScope(shield=True):
            await self.runtime.remove(sandbox.container_id)
        log.info("sandbox %s ended: %s", sandbox.id, reason)

    async def discard(self, sandbox: Sandbox) -> None:
        """Remove a sandbox that belongs to nobody (a pool member not needed any more)."""
        sandbox.end(EndReason.DESTROYED, "not needed in the pool")
        self._fold_traffic(sandbox)
        sandbox.scope.cancel()
        with trio.CancelScope(shield=True):
            await self.runtime.remove(sandbox.container_id)

    async def end_all(self, reason: EndReason) -> None:
        async with trio.open_nursery() as nursery:
            for sandbox in list(self._sandboxes.values()):
                nursery.start_soon(self.finish, sandbox, reason, "")
            for pooled in self.pool.members():
                nursery.start_soon(self.discard, pooled)
