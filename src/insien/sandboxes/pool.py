"""The warm pool: sandboxes started ahead of demand, so a create is a hand-over.

One pool per profile (a template and its resources). A pooled sandbox is a running container
whose agent has said it is ready; it has no owner, counts against no tenant, and never expires.
A create whose template and resources match a profile takes one (`take`, then `hand_over`) and
the pool refills in the background (`keep_filled`), never above its size, and never once the
server has begun to shut down. On hand-over the server renames the container to carry its
owner under the server's seal, since labels cannot change and nothing inside a container can
rename it; a restarted server reads the owner back from the name (see `provenance`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import trio

from ..config import Profile, Settings
from ..runtime.base import Runtime, RuntimeFailure
from ..tenancy.resources import Resources
from ..tenancy.tenants import Tenant
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
        self.changed = trio.Event()
        self.closed = False
        """Set when the server begins to shut down: nothing starts after that."""
        self._runtime = runtime
        self._settings = settings
        self._sealer = sealer
        self._launcher = launcher
        self._discard = discard

    def profile_for(self, template: str, resources: Resources) -> Profile | None:
        for profile in self.profiles.values():
            if profile.template == template and profile.resources == resources:
                return profile
        return None

    def take(self, profile: Profile) -> Sandbox | None:
        """A ready sandbox of this profile, now no longer in the pool; None if there is none."""
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
        if len(ready) >= profile.size:
            return False
        ready.append(sandbox)
        return True

    def shortfall(self, profile: Profile) -> int:
        """How many more to start now so that ready + starting reaches the size."""
        ready = [s for s in self._ready[profile.key] if not s.link.closed.is_set()]
        self._ready[profile.key] = ready
        return max(0, profile.size - len(ready) - self._filling[profile.key])

    def starting(self, profile: Profile, delta: int) -> None:
        self._filling[profile.key] += delta

    def members(self) -> list[Sandbox]:
        return [sandbox for ready in self._ready.values() for sandbox in ready]

    def counts(self) -> dict[str, int]:
        return {key: len(ready) for key, ready in self._ready.items()}

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
            if self.closed or not self.add(profile, sandbox):
                await self._discard(sandbox)
        finally:
            self.starting(profile, -1)

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
