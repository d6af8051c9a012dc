"""The sandbox lifecycle: registry, create, destroy, and the tasks that keep each link alive.

The manager owns one nursery; every sandbox's AgentLink runs there in its own cancel scope.
Docker is the source of truth for what exists: containers carry labels naming this instance.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from ._resources import agent_zipapp
from .auth import Tenant
from .config import Settings
from .link import AgentLink
from .runtime.docker import ContainerSpec, DockerRuntime

log = logging.getLogger("insien.manager")


class SandboxNotFound(Exception):
    """No such sandbox for this caller (absent, ended, or owned by someone else)."""


class SandboxStartError(Exception):
    """The container was created but its agent never said it was ready."""


def new_sandbox_id() -> str:
    """128 random bits, shaped like a UUID so the seed's clients accept it."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16)))


def iso_timestamp(moment: datetime) -> str:
    """`2024-01-01T00:00:00.000Z`, the seed's createdAt format."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


@dataclass(eq=False)
class Sandbox:
    id: str
    owner: str
    container_id: str
    created_at: datetime
    image: str
    link: AgentLink
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    end_reason: str | None = None

    def end(self, reason: str) -> None:
        """Record why the sandbox ended (the first reason wins) and wake whoever waits on it."""
        if self.end_reason is None:
            self.end_reason = reason
        self.ended.set()

    @property
    def connected(self) -> bool:
        return self.link.connected


class SandboxManager:
    """Creates, finds and destroys sandboxes. Use `async with SandboxManager.open(...)`."""

    def __init__(self, runtime: DockerRuntime, settings: Settings, nursery: trio.Nursery) -> None:
        self._runtime = runtime
        self._settings = settings
        self._nursery = nursery
        self._sandboxes: dict[str, Sandbox] = {}
        self._agent_zip = agent_zipapp()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, runtime: DockerRuntime, settings: Settings
    ) -> AsyncIterator[SandboxManager]:
        async with trio.open_nursery() as nursery:
            manager = cls(runtime, settings, nursery)
            await manager._remove_leftovers()
            try:
                yield manager
            finally:
                with trio.CancelScope(shield=True):
                    await manager.destroy_all()
                nursery.cancel_scope.cancel()

    async def _remove_leftovers(self) -> None:
        """Sandboxes of this instance from a previous run that crashed: nothing can resume them."""
        leftovers = await self._runtime.list_sandboxes(self._settings.instance)
        for container in leftovers:
            log.warning(
                "removing sandbox container %s left by an earlier run", container["Id"][:12]
            )
            await self._runtime.remove(container["Id"])

    def get(self, sandbox_id: str, tenant: Tenant) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        # Someone else's sandbox looks exactly like one that does not exist.
        if sandbox is None or sandbox.owner != tenant.id:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    def list(self, tenant: Tenant) -> list[Sandbox]:
        return [s for s in self._sandboxes.values() if s.owner == tenant.id]

    async def create(self, tenant: Tenant) -> Sandbox:
        settings = self._settings
        created_at = datetime.now(UTC)
        spec = ContainerSpec(
            sandbox_id=new_sandbox_id(),
            image=settings.agent_image,
            owner=tenant.id,
            instance=settings.instance,
            created_at=iso_timestamp(created_at),
            template=settings.agent_image,
            network_mode=settings.network_mode,
            mem_limit=settings.memory_limit,
            nano_cpus=int(settings.cpus * 1e9),
            pids_limit=settings.pids_limit,
            environment={
                "INSIEN_AGENT_MAX_LINE": str(settings.max_line_bytes),
                "INSIEN_AGENT_MAX_OUTPUT": str(settings.max_output_bytes),
                "INSIEN_AGENT_MAX_READ": str(settings.max_read_bytes),
            },
        )
        container_id = await self._runtime.create(spec, self._agent_zip)
        try:
            # Attach before start so not one byte of the agent's output is missed.
            stream = await self._runtime.attach(container_id)
            link = AgentLink(
                stream, name=f"sandbox {spec.sandbox_id[:8]}", max_line=settings.max_line_bytes
            )
            sandbox = Sandbox(
                id=spec.sandbox_id,
                owner=tenant.id,
                container_id=container_id,
                created_at=created_at,
                image=spec.image,
                link=link,
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
                self._sandboxes.pop(spec.sandbox_id, None)
                await self._runtime.remove(container_id)
            raise
        self._sandboxes[sandbox.id] = sandbox
        log.info("created sandbox %s (container %s)", sandbox.id, container_id[:12])
        return sandbox

    async def _keep_link(self, sandbox: Sandbox, *, task_status: trio.TaskStatus[None]) -> None:
        with sandbox.scope:
            await sandbox.link.run(task_status=task_status)
        if not sandbox.scope.cancelled_caught:
            log.warning("sandbox %s: agent link ended: %s", sandbox.id, sandbox.link.close_reason)
        sandbox.end(f"agent gone: {sandbox.link.close_reason}")

    async def destroy(self, sandbox_id: str, tenant: Tenant) -> None:
        sandbox = self.get(sandbox_id, tenant)
        await self._destroy(sandbox)

    async def _destroy(self, sandbox: Sandbox) -> None:
        self._sandboxes.pop(sandbox.id, None)
        sandbox.end("sandbox destroyed")
        sandbox.scope.cancel()
        await self._runtime.remove(sandbox.container_id)
        log.info("destroyed sandbox %s", sandbox.id)

    async def destroy_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for sandbox in list(self._sandboxes.values()):
                nursery.start_soon(self._destroy, sandbox)


async def _first_of(*waiters: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of the waiters returns."""
    async with trio.open_nursery() as nursery:

        async def wait_then_stop(waiter: Callable[[], Awaitable[object]]) -> None:
            await waiter()
            nursery.cancel_scope.cancel()

        for waiter in waiters:
            nursery.start_soon(wait_then_stop, waiter)
