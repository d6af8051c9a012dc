"""The warm pool: sandboxes started ahead of demand, so a create is a hand-over.

One pool per profile (a template and its resources). A pooled sandbox is a running container
whose agent has said it is ready; it has no owner, counts against no tenant, and never expires.
A create whose template and resources match a profile takes one (claim) and the pool refills
in the background, never above its size. On claim the server renames the container to carry
its owner under the server's seal, since labels cannot change and nothing inside a container
can rename it; a restarted server reads the owner back from the name (see `provenance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from .resources import Resources
from .sandbox import Sandbox


@dataclass(frozen=True)
class Profile:
    template: str
    resources: Resources
    size: int

    @property
    def key(self) -> str:
        """A label value naming the profile: template and limits."""
        r = self.resources
        return f"{self.template}|{r.cpus:g}|{r.memory}|{r.pids}"


class WarmPool:
    """Ready sandboxes per profile; `take` is synchronous so concurrent creates never share one."""

    def __init__(self, profiles: list[Profile]) -> None:
        self.profiles = {profile.key: profile for profile in profiles}
        self._ready: dict[str, list[Sandbox]] = {key: [] for key in self.profiles}
        self._filling: dict[str, int] = dict.fromkeys(self.profiles, 0)
        self.changed = trio.Event()

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
