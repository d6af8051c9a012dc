"""Starting one sandbox: its sealed labels, its container, its link, and its agent's hello."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import trio

from .._resources import agent_zipapp
from ..config import Settings
from ..link import AgentLink
from ..runtime.base import (
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
    ImageStore,
    Runtime,
)
from .provenance import Sealer
from .root import root_allowed, users_remapped
from .sandbox import Sandbox, SandboxOptions, iso_timestamp


class SandboxStartError(Exception):
    """The container was created but its agent never said it was ready."""


def new_sandbox_id() -> str:
    """128 random bits, shaped like a UUID so the original Node.js design's clients accept it."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16)))


async def first_of(*waiters: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of the waiters returns."""
    async with trio.open_nursery() as nursery:

        async def wait_then_stop(waiter: Callable[[], Awaitable[object]]) -> None:
            await waiter()
            nursery.cancel_scope.cancel()

        for waiter in waiters:
            nursery.start_soon(wait_then_stop, waiter)


class Launcher:
    """Creates a container, attaches before starting it (so not one byte of the agent's output
    is missed), and waits for the agent's hello. The sandbox is not registered anywhere yet."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        sealer: Sealer,
        start_link: Callable[[Sandbox], Awaitable[None]],
    ) -> None:
        self._runtime = runtime
        self._settings = settings
        self._sealer = sealer
        self._start_link = start_link
        self._agent_zip = agent_zipapp()

    def spec(
        self,
        sandbox_id: str,
        owner: str,
        options: SandboxOptions,
        pool_key: str | None,
        created_at: datetime,
    ) -> ContainerSpec:
        settings = self._settings
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
        root = root_allowed(options.runtime, users_remapped(self._runtime))
        return ContainerSpec(
            sandbox_id=sandbox_id,
            image=options.template,
            labels=labels,
            python=options.python,
            capabilities=tuple(settings.capabilities),
            network_mode=options.network,
            runtime=options.runtime,
            mem_limit=options.resources.memory,
            nano_cpus=int(options.resources.cpus * 1e9),
            pids_limit=options.resources.pids,
            # The sandbox's own `env` goes to the agent as a message (below), for user
            # commands only: the agent's process never runs with anything a tenant chose.
            environment={
                "INSIEN_AGENT_MAX_LINE": str(settings.max_line_bytes),
                "INSIEN_AGENT_MAX_OUTPUT": str(settings.max_output_bytes),
                "INSIEN_AGENT_MAX_READ": str(settings.max_read_bytes),
                "INSIEN_AGENT_USER": settings.sandbox_user,
                # whether a command may ask for root: only where root is unprivileged outside
                "INSIEN_AGENT_ROOT": "1" if root else "0",
            },
            tmp_size=settings.tmp_size,
            disk_limit=settings.disk_limit,
            nofile=settings.nofile,
            volumes=options.volumes,
            root=root,
        )

    async def image_present(self, image: str) -> bool:
        """Whether the runtime has `image`. One that cannot look (no `ImageStore`: Kubernetes,
        whose images live on the nodes) says yes, and a create of a missing one fails with
        the runtime's reason."""
        if isinstance(self._runtime, ImageStore):
            return await self._runtime.image_exists(image)
        return True

    async def launch(
        self, *, owner: str, options: SandboxOptions, pool_key: str | None = None
    ) -> Sandbox:
        settings = self._settings
        sandbox_id = new_sandbox_id()
        created_at = datetime.now(UTC)
        spec = self.spec(sandbox_id, owner, options, pool_key, created_at)
        container_id = await self._runtime.create(spec, self._agent_zip)
        try:
            channel = await self._runtime.attach(container_id)
            link = AgentLink(
                channel,
                name=f"sandbox {sandbox_id[:8]}",
                max_line=settings.max_line_bytes,
                # An attach that came after the agent's first words asks for them again.
                resume_after=None if self._runtime.attach_from_start else 0,
            )
            if options.env:
                # Queued before the agent starts, so it is the first line the agent reads.
                link.send_internal_nowait({"type": "env", "env": options.env})
            sandbox = Sandbox(
                id=sandbox_id,
                owner=owner,
                container_id=container_id,
                created_at=created_at,
                options=options,
                link=link,
                expires_at=created_at + timedelta(seconds=options.timeout),
            )
            await self._start_link(sandbox)
            await self._runtime.start(container_id)
            with trio.move_on_after(settings.ready_timeout) as waited:
                await first_of(link.ready.wait, link.closed.wait)
            if waited.cancelled_caught or not link.connected:
                reason = link.close_reason or f"no ready message within {settings.ready_timeout}s"
                raise SandboxStartError(f"sandbox agent did not start: {reason}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._runtime.remove(container_id)
            raise
        return sandbox
