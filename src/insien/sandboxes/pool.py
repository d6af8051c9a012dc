"""The warm pool: sandboxes started ahead of demand, so a create is a hand-over.

One pool per profile (a template and its resources). A pooled sandbox is a running container
whose agent has said it is ready; it has no owner, counts against no tenant, and never expires.
A create whose template and resources match a profile takes one (`take`, then `hand_over`) and
the pool refills in the background (`keep_filled`), never once the server has begun to shut
down.

**Size.** A pool sizes itself by demand: its target is the most creates that came within
a sixth of the last minute (`demand`; INSIEN_POOL_DEMAND_WINDOW sets the minute), never below
the operator's `size` and never above its `max_size`, nor past INSIEN_POOL_MEMORY_FRACTION of
the host's available memory. A burst grows the pool to meet the next one; a quiet window
shrinks it back, one sandbox per check. Refills run FILL_CONCURRENCY at a time, so a refill
never takes every CPU from the sandboxes that are running; creates the pool cannot serve start
cold, all at once.

On hand-over the server renames the container to carry its owner under the server's seal,
since labels cannot change and nothing inside a container can rename it; a restarted server
reads the owner back from the name (see `provenance`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from ..config import Settings
from ..runtime.base import ImageStore, Runtime, RuntimeFailure
from ..tenancy.resources import Resources
from ..tenancy.tenants import Tenant
from .demand import Demand
from .launcher import Launcher, SandboxStartError
from .provenance import Sealer
from .records import claim_notes, notes_message
from .sandbox import Sandbox, SandboxOptions, State

log = logging.getLogger("insien.pool")

CHECK_INTERVAL = 1.0
RETRY_DELAY = 5.0
REFILL_DELAY = 0.5
"""Starting a container takes a CPU for a quarter second: the sandbox just handed over gets its
first commands before the pool competes with it."""
FILL_CONCURRENCY = max(2, os.cpu_count() or 2)
CONTEXTS_LABEL = "insien.contexts"
"""An image label naming the code contexts (`python,javascript`) a pooled sandbox of it starts
ahead of use, so that its first `runCode` does not wait for an interpreter (the interpreter
image has `python`)."""
WARM_CONTEXTS_TIMEOUT = 30.0
POOLED_SANDBOX_BYTES = 32 * 1024 * 1024
"""What an idle ready sandbox costs the host (agent, helper, shim), for the memory bound."""


@dataclass(frozen=True)
class Profile:
    """A warm pool's profile: a template and its resources, and how many to keep ready."""

    template: str
    resources: Resources
    size: int
    max_size: int = 0
    """The most ready sandboxes the pool grows to when creates come faster (never below
    `size`; see WarmPool for the policy)."""

    @property
    def ceiling(self) -> int:
        return max(self.size, self.max_size)

    @property
    def key(self) -> str:
        """A label value naming the profile: template and limits."""
        r = self.resources
        return f"{self.template}|{r.cpus:g}|{r.memory}|{r.pids}"


def profiles_of(settings: Settings) -> list[Profile]:
    """Every warm pool's profile from the operator's settings (checked there): a later entry
    for the same template and resources wins, and a pool of size 0 is none."""
    merged: dict[str, Profile] = {}
    for template, resources, size, most in settings.pool_entries():
        profile = Profile(template, resources, size, most)
        merged[profile.key] = profile
    return [profile for profile in merged.values() if profile.size > 0]


def available_memory() -> int | None:
    """The host's available memory (MemAvailable), or None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class WarmPool:
    """Ready sandboxes per profile; `take` is synchronous so concurrent creates never share one."""

    def __init__(
        self,
        profiles: list[Profile],
        *,
        runtime: Runtime,
        settings: Settings,
        sealer: Sealer,
        launcher: Launcher,
        discard: Callable[[Sandbox], Awaitable[None]],
    ) -> None:
        self.profiles = {profile.key: profile for profile in profiles}
        self._ready: dict[str, list[Sandbox]] = {key: [] for key in self.profiles}
        self._filling: dict[str, int] = dict.fromkeys(self.profiles, 0)
        self._demand = {
            key: Demand(trio.current_time, settings.pool_demand_window) for key in self.profiles
        }
        self._fill_slots = trio.CapacityLimiter(FILL_CONCURRENCY)
        self.changed = trio.Event()
        self.closed = False
        """Set when the server begins to shut down: nothing starts after that."""
        self._runtime = runtime
        self._settings = settings
        self._sealer = sealer
        self._launcher = launcher
        self._discard = discard
        self._contexts: dict[str, list[str]] = {}
        """The code contexts each template's pooled sandboxes start (CONTEXTS_LABEL)."""

    def profile_for(self, template: str, resources: Resources) -> Profile | None:
        for profile in self.profiles.values():
            if profile.template == template and profile.resources == resources:
                return profile
        return None

    def take(self, profile: Profile) -> Sandbox | None:
        """A ready sandbox of this profile, now no longer in the pool; None if there is none."""
        self._demand[profile.key].record()
        ready = self._ready[profile.key]
        while ready:
            sandbox = ready.pop(0)
            if sandbox.link.connected:
                self._wake()
                return sandbox
        self._wake()
        return None

    def add(self, profile: Profile, sandbox: Sandbox) -> bool:
        """Put a ready sandbox in; False (the caller removes it) if the pool is already full."""
        ready = self._ready[profile.key]
        if len(ready) >= self.target(profile):
            return False
        ready.append(sandbox)
        return True

    def target(self, profile: Profile) -> int:
        """How many ready sandboxes this pool aims for now (see the module's docstring)."""
        wanted = min(max(profile.size, self._demand[profile.key].peak()), profile.ceiling)
        if wanted <= profile.size:
            return wanted  # the operator's size holds whatever the memory (read only if needed)
        available = available_memory()
        if available is not None:
            held = len(self._ready[profile.key]) + self._filling[profile.key]
            room = int(available * self._settings.pool_memory_fraction) // POOLED_SANDBOX_BYTES
            wanted = max(profile.size, min(wanted, held + room))
        return wanted

    def shortfall(self, profile: Profile) -> int:
        """How many more to start now so that ready + starting reaches the target."""
        ready = [s for s in self._ready[profile.key] if not s.link.closed.is_set()]
        self._ready[profile.key] = ready
        return max(0, self.target(profile) - len(ready) - self._filling[profile.key])

    def surplus(self, profile: Profile) -> Sandbox | None:
        """A ready sandbox beyond the target (demand fell), taken out to be removed."""
        ready = self._ready[profile.key]
        if len(ready) > self.target(profile):
            return ready.pop(0)
        return None

    def starting(self, profile: Profile, delta: int) -> None:
        self._filling[profile.key] += delta

    def members(self) -> list[Sandbox]:
        return [sandbox for ready in self._ready.values() for sandbox in ready]

    def counts(self) -> dict[str, int]:
        return {key: len(ready) for key, ready in self._ready.items()}

    def targets(self) -> dict[str, int]:
        return {key: self.target(profile) for key, profile in self.profiles.items()}

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def close(self) -> None:
        self.closed = True
        self._wake()

    # -- filling ------------------------------------------------------------------------------

    async def keep_filled(self) -> None:
        """Keep every profile's pool at its size; wakes when a sandbox is taken."""
        async with trio.open_nursery() as fills:
            while not self.closed:
                changed = self.changed
                await trio.sleep(REFILL_DELAY)
                for profile in self.profiles.values():
                    for _ in range(0 if self.closed else self.shortfall(profile)):
                        self.starting(profile, +1)
                        fills.start_soon(self._fill_one, profile)
                    extra = None if self.closed else self.surplus(profile)
                    if extra is not None:
                        fills.start_soon(self._discard, extra)
                with trio.move_on_after(CHECK_INTERVAL):
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
                async with self._fill_slots:
                    sandbox = await self._launcher.launch(
                        owner="", options=options, pool_key=profile.key
                    )
            except (RuntimeFailure, SandboxStartError) as exc:
                log.warning("warm pool %s: %s", profile.template, exc)
                await trio.sleep(RETRY_DELAY)  # keeps this slot "starting": no busy retry
                return
            # One command through every code path (spawn, pipes, the file cache of the image),
            # so that the first one after the hand-over runs at full speed.
            with trio.move_on_after(10):
                await sandbox.link.call({"type": "exec", "cmd": "true"})
            await self._warm_contexts(profile.template, sandbox)
            if self.closed or not self.add(profile, sandbox):
                await self._discard(sandbox)
        finally:
            self.starting(profile, -1)

    async def _warm_contexts(self, template: str, sandbox: Sandbox) -> None:
        """Start the code contexts the template's label names; a sandbox whose contexts fail
        to start still serves (its first cell starts them, and says why if it cannot). A
        runtime that cannot read image labels (no `ImageStore`) starts none ahead."""
        if template not in self._contexts:
            labels: dict[str, str] = {}
            if isinstance(self._runtime, ImageStore):
                with suppress(RuntimeFailure):
                    labels = await self._runtime.image_labels(template) or {}
            named = labels.get(CONTEXTS_LABEL, "").split(",")
            self._contexts[template] = [name.strip() for name in named if name.strip()]
        languages = self._contexts[template]
        if not languages:
            return
        with trio.move_on_after(WARM_CONTEXTS_TIMEOUT):
            answer = await sandbox.link.call({"type": "warmContexts", "languages": languages})
            if answer.get("type") == "error":
                log.warning(
                    "warm pool %s: contexts not started: %s", template, answer.get("message")
                )

    # -- claiming -----------------------------------------------------------------------------

    async def hand_over(
        self,
        sandbox: Sandbox,
        tenant: Tenant,
        options: SandboxOptions,
        nursery: trio.Nursery,
    ) -> Sandbox:
        """Make a sandbox just taken from the pool the tenant's, with the create's options.

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
        note = notes_message(self._sealer, sandbox, claimed=True, **claim_notes(sandbox))
        # Queued ahead of any request of the new owner: the env its commands get, and the
        # notes that let a restart recognise the claim.
        for message in ([{"type": "env", "env": options.env}] if options.env else []) + [note]:
            if not sandbox.link.send_internal_nowait(message):
                await sandbox.link.send_internal(message)
        sandbox.state = State.RUNNING
        sandbox.touch()
        nursery.start_soon(self._rename_claimed, sandbox)
        log.info("claimed pooled sandbox %s for %s", sandbox.id, tenant.id)
        return sandbox

    async def _rename_claimed(self, sandbox: Sandbox) -> None:
        try:
            await self._runtime.rename(
                sandbox.container_id, self._sealer.claimed_name(sandbox.id, sandbox.owner)
            )
        except RuntimeFailure as exc:
            # Without the name a restart cannot tell whose it is, and would remove it.
            log.error("claimed sandbox %s could not be renamed: %s", sandbox.id, exc)
