"""Restart recovery: rebuild the registry from this instance's containers and their agents.

Each container is recovered on its own: one that fails (unsealed labels, a hostile agent, a
runtime error) is refused, removed and reported; the others carry on. Only what the server
sealed is believed (see `provenance`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio

from ..link import AgentLink
from ..runtime.base import LABEL_POOL, Pausable, RuntimeFailure
from .launcher import first_of
from .provenance import ProvenanceError
from .records import apply_notes, record_from
from .sandbox import EndReason, Sandbox, State

if TYPE_CHECKING:
    from .manager import SandboxManager

log = logging.getLogger("insien.recovery")


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


async def recover(manager: SandboxManager) -> RecoveryReport:
    """Recover every container of this instance, concurrently; returns what became of them."""
    found = await manager.runtime.list_sandboxes(manager.settings.instance)
    report = RecoveryReport(found=len(found))

    async def one(container_id: str) -> None:
        try:
            outcome = await _recover_one(manager, container_id)
        except Exception as exc:
            outcome = "refused"
            log.error("refusing container %s at start-up: %r", container_id[:12], exc)
            with trio.CancelScope(shield=True):
                try:
                    await manager.runtime.remove(container_id)
                except RuntimeFailure as removal:
                    log.error("could not remove container %s: %s", container_id[:12], removal)
        report.count(outcome)

    async with trio.open_nursery() as nursery:
        for container_id in found:
            nursery.start_soon(one, container_id)
    if found:
        log.info("start-up: %s", report.summary())
    return report


async def _recover_one(manager: SandboxManager, container_id: str) -> str:
    """Recover one container; returns what became of it (see RecoveryReport)."""
    runtime, settings, sealer = manager.runtime, manager.settings, manager.sealer
    info = await runtime.inspect(container_id)
    if info is None:
        return "gone"
    try:
        labels = sealer.verified_labels(info.labels)
        record = record_from(labels, info, settings)
        pool_key = labels[LABEL_POOL] or None
        owner = sealer.owner_from_name(info.name, record["id"])
    except (KeyError, ValueError, TypeError, ProvenanceError) as exc:
        log.error("refusing container %s at start-up: %s; removing it", container_id[:12], exc)
        await runtime.remove(container_id)
        return "refused"
    pooled = pool_key is not None and owner is None
    if pool_key is not None and owner is not None:
        record["owner"] = owner  # claimed: its sealed name says by whom
    if pool_key is None and owner is not None:
        raise ProvenanceError("a claimed name on a container that was never pooled")
    name = f"sandbox {record['id'][:8]}"
    if not info.running:
        # It ended while the server was down: its owner can still ask why.
        reason = (
            EndReason.EVICTED
            if info.evicted
            else EndReason.OOM
            if info.oom_killed
            else EndReason.AGENT_EXITED
        )
        ended = Sandbox(
            **record, link=AgentLink.gone(name=name, reason="while the server was down")
        )
        ended.end(reason, "while the server was down")
        if not pooled:
            manager.remember_ended(ended)
        log.warning("sandbox %s ended (%s) while the server was down", ended.id, reason)
        await runtime.remove(container_id)
        return "ended"
    # Only a `Pausable` runtime has paused containers: thawed for the resume, paused again.
    pausable = runtime if info.paused and isinstance(runtime, Pausable) else None
    try:
        if pausable is not None:
            await pausable.unpause(container_id)  # the agent must answer the resume
        channel = await runtime.attach(container_id)
    except RuntimeFailure as exc:
        log.warning("removing container %s: cannot attach (%s)", container_id[:12], exc)
        await runtime.remove(container_id)
        return "refused"
    link = AgentLink(
        channel, name=name, max_line=settings.max_line_bytes, resume_after=0, resync=True
    )
    sandbox = Sandbox(**record, link=link)
    if not pooled:
        manager.register(sandbox)
    await manager.start_link(sandbox)
    with trio.move_on_after(settings.ready_timeout):
        await first_of(link.ready.wait, link.closed.wait)
    if not link.connected:
        why = link.close_reason or "the agent did not answer the resume"
        reason = EndReason.AGENT_PROTOCOL_ERROR if link.protocol_error else EndReason.ERROR
        await manager.finish(sandbox, reason, f"not recovered: {why}")
        return "refused"
    sandbox.state = State.RUNNING
    raw_notes = (link.resumed or {}).get("notes") or {}
    try:
        notes = sealer.verified_notes(sandbox.id, raw_notes) if raw_notes else {}
    except ProvenanceError:
        log.error("sandbox %s: its agent's notes are not sealed; ignoring them", sandbox.id)
        notes = {}
    if pooled and (notes.get("claimed") or raw_notes.get("claimed")):
        # Claimed just before the server died, not yet renamed: whose it is is unknown.
        log.warning("removing sandbox %s: claimed but its owner was never recorded", sandbox.id)
        await manager.discard(sandbox)
        return "refused"
    if pooled:
        profile = manager.pool.profiles.get(str(pool_key))
        if profile is None or not manager.pool.add(profile, sandbox):
            await manager.discard(sandbox)  # that profile is gone or already full
            return "discarded"
        return "pooled"
    apply_notes(sandbox, notes)
    sandbox.notes = dict(notes)
    sandbox.touch()
    if datetime.now(UTC) >= sandbox.expires_at:
        detail = "its lifetime passed while the server was down"
        await manager.finish(sandbox, EndReason.EXPIRED, detail)
        return "ended"
    await manager.apply_network(sandbox)
    if pausable is not None:
        await pausable.pause(container_id)
        sandbox.state = State.PAUSED
    log.info("recovered sandbox %s (container %s)", sandbox.id, container_id[:12])
    return "recovered"
