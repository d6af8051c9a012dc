"""Who may reach which surface of a sandbox: the one place where a credential a front was
given is weighed against what the caller wants to reach (docs/security.md, "Credentials and
surfaces"). Fronts only collect what a request carries; this module decides.

Every credential has one purpose. The API key is its tenant's master credential; a control
token (an `agentUrl` token, E2B's `envdAccessToken`) opens the sandbox's control surfaces; a
traffic token (E2B's `trafficAccessToken`) and a preview token (one port) open the user's own
ports; "public traffic" opens the user's own ports to anyone and nothing Insien serves.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

from ..link import AgentLink
from ..link.budget import ByteBudget
from ..link.tunnel import Tunnel, TunnelCounter, open_tunnel
from ..tenancy.auth import Audience, Authenticator
from ..tenancy.budgets import TenantBudgets
from ..tenancy.quotas import ConnectionCounter, QuotaExceeded
from ..tenancy.tenants import Tenant
from .errors import RuntimeFailure
from .manager import SandboxManager, SandboxNotFound, SandboxStartError
from .sandbox import Sandbox, State


class Surface(enum.Enum):
    """What a caller wants to reach in a sandbox."""

    CONTROL = "control"
    """Everything Insien serves for the sandbox: the agent link (RPC WebSocket), envd
    (processes, filesystem, `/files`), and code execution on the interpreter's port."""
    CONTEXTS = "contexts"
    """The code interpreter's context management (create, list, restart, remove): runs no
    code of its own. E2B's SDKs send only the traffic token on these calls."""
    PORT = "port"
    """A program the user runs in the sandbox, reached on one of its ports."""
    RECORD = "record"
    """What Insien knows about the sandbox (info, status, metrics, logs, its network policy):
    the key's alone, and reading it is not using the sandbox."""


class Via(enum.Enum):
    """Which credential admitted a caller."""

    KEY = "key"
    CONTROL_TOKEN = "control token"
    TRAFFIC_TOKEN = "traffic token"
    PREVIEW_TOKEN = "preview token"
    PUBLIC = "public traffic"


ALLOWED: dict[Via, frozenset[Surface]] = {
    Via.KEY: frozenset(Surface),
    Via.CONTROL_TOKEN: frozenset({Surface.CONTROL, Surface.CONTEXTS}),
    Via.TRAFFIC_TOKEN: frozenset({Surface.CONTEXTS, Surface.PORT}),
    Via.PREVIEW_TOKEN: frozenset({Surface.PORT}),  # and only the port it names
    Via.PUBLIC: frozenset({Surface.PORT}),
}
"""The credential x surface table: docs/security.md prints it, tests/attacks/test_credentials.py
tries every cell."""


@dataclass(frozen=True)
class Credentials:
    """What one request carries; a front fills in what its protocol has."""

    key: str | None = None
    control_token: str | None = None
    traffic_token: str | None = None
    preview_token: str | None = None


@dataclass(frozen=True)
class Admission:
    """A caller let in: the sandbox, the tenant it acts as (None for public traffic), how.

    The only way a front reaches a sandbox's agent (`link`) and says it was used
    (`active()`): tests/unit/test_layers.py keeps fronts off `Sandbox.link` and `touch()`."""

    sandbox: Sandbox
    tenant: Tenant | None
    via: Via
    surface: Surface
    preview_token: str | None = None
    """The preview token that admitted the caller, for a front that keeps it in a cookie."""

    @property
    def link(self) -> AgentLink:
        """The sandbox's agent link, for this admission's surface."""
        return self.sandbox.link

    def active(self) -> None:
        """Traffic on this admission: the sandbox is in use (idle timeouts count from here).
        Reading its record is not use."""
        if self.surface is not Surface.RECORD:
            self.sandbox.touch()


class Unauthenticated(Exception):
    """No credential the request carried opens this surface of this sandbox."""


class StillPaused(Exception):
    """Traffic reached a paused sandbox that it may not resume (or that failed to resume)."""


class TooManyTunnels(Exception):
    """The sandbox has as many connections into its ports open as it may (`max_tunnels`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} connections into this sandbox are open already")
        self.limit = limit


class HeldConnection:
    """One of a tenant's long-lived connections (a WebSocket, an event stream), counted against
    its plan's `max_connections` until released, with the byte budget (if it asked for one)
    that what it buffers for a slow client is charged to."""

    def __init__(self, budget: ByteBudget | None, release: Callable[[], None]) -> None:
        self.budget = budget
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Give the connection back (again: nothing)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> HeldConnection:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Gate:
    """Admits a request to one surface of one sandbox, or refuses it.

    A credential of another tenant, or for another sandbox, counts as no credential; a
    sandbox that does not exist (or is someone else's) is `SandboxNotFound` only to a caller
    whose credential would have opened it, so a guess of ids learns nothing."""

    def __init__(
        self,
        manager: SandboxManager,
        auth: Authenticator,
        *,
        budgets: TenantBudgets,
        max_tunnels: int,
    ) -> None:
        self.manager = manager
        self.auth = auth
        self.connections = ConnectionCounter()
        """Each tenant's open WebSockets and event streams (`hold_connection`)."""
        self.budgets = budgets
        self.max_tunnels = max_tunnels
        self._tunnels = TunnelCounter()

    def hold_connection(
        self, tenant: Tenant, *, buffer: tuple[int, int] | None = None
    ) -> HeldConnection:
        """A long-lived connection of `tenant`'s, or `QuotaExceeded` past its plan's
        `max_connections`. `buffer` (bytes, copies) gives it a byte budget within the
        tenant's."""
        try:
            self.connections.acquire(tenant)
        except QuotaExceeded as exc:
            self.manager.metrics.quota_refusals.labels(exc.reason).inc()
            raise
        if buffer is None:
            return HeldConnection(None, lambda: self.connections.release(tenant))
        limit, copies = buffer
        budget = self.budgets.for_connection(tenant.id, limit, copies)

        def release() -> None:
            self.connections.release(tenant)
            self.budgets.connection_closed(tenant.id)
            self.budgets.forget_idle()

        return HeldConnection(budget, release)

    @asynccontextmanager
    async def tunnel(
        self, admission: Admission, port: int, *, idle_timeout: float, first: bytes = b""
    ) -> AsyncIterator[Tunnel]:
        """A connection into `port` of the admitted sandbox (`first` written as it opens), one
        of the `max_tunnels` a sandbox may have open, or `TooManyTunnels`."""
        sandbox_id = admission.sandbox.id
        if not self._tunnels.try_take(sandbox_id, self.max_tunnels):
            raise TooManyTunnels(self.max_tunnels)
        try:
            async with open_tunnel(
                admission.link, port, idle_timeout=idle_timeout, first=first
            ) as tunnel:
                yield tunnel
        finally:
            self._tunnels.release(sandbox_id)

    def admit(
        self,
        sandbox_id: str,
        credentials: Credentials,
        surface: Surface,
        *,
        port: int | None = None,
    ) -> Admission:
        """The admission of a caller with `credentials` to `surface` (`port` for PORT).
        Counts as activity on the sandbox."""
        admission = self._decide(sandbox_id, credentials, surface, port)
        admission.active()
        return admission

    async def awaken(self, admission: Admission) -> None:
        """Traffic for a paused sandbox resumes it where its options allow (E2B's
        autoResume); otherwise StillPaused, at once, rather than a request its frozen agent
        never answers."""
        sandbox = admission.sandbox
        if sandbox.state is not State.PAUSED:
            return
        try:
            awake = await self.manager.resume_for_traffic(sandbox)
        except (RuntimeFailure, SandboxStartError) as exc:
            raise StillPaused(f"the sandbox {sandbox.id} could not be resumed: {exc}") from None
        if not awake:
            raise StillPaused(f"the sandbox {sandbox.id} is paused: connect to resume it")

    def for_tenant(
        self,
        sandbox_id: str,
        tenant: Tenant,
        surface: Surface = Surface.CONTROL,
        *,
        include_ended: bool = False,
    ) -> Admission:
        """The admission of a caller a front has already authenticated by its tenant's key
        (REST routes). Resolves the sandbox for that tenant only (an ended one's record too,
        with `include_ended`); counts as activity unless only the record is read."""
        sandbox = self.manager.get(sandbox_id, tenant, include_ended=include_ended)
        admission = Admission(sandbox, tenant, Via.KEY, surface)
        admission.active()
        return admission

    def _decide(
        self, sandbox_id: str, credentials: Credentials, surface: Surface, port: int | None
    ) -> Admission:
        missing: SandboxNotFound | None = None
        for via, tenant in self._tenants(sandbox_id, credentials, port):
            if surface not in ALLOWED[via]:
                continue
            try:
                sandbox = self.manager.get(sandbox_id, tenant)
            except SandboxNotFound as exc:  # a key of another tenant: maybe public below
                missing = exc
                continue
            token = credentials.preview_token if via is Via.PREVIEW_TOKEN else None
            return Admission(sandbox, tenant, via, surface, token)
        if surface in ALLOWED[Via.PUBLIC]:
            public = self.manager.public(sandbox_id)
            if public is not None:
                return Admission(public, None, Via.PUBLIC, surface)
        if missing is not None:
            raise missing
        raise Unauthenticated(_wanted(surface))

    def _tenants(
        self, sandbox_id: str, credentials: Credentials, port: int | None
    ) -> list[tuple[Via, Tenant]]:
        """Each valid credential the request carries, with the tenant it speaks for."""
        found: list[tuple[Via, Tenant]] = []
        tenant = self.auth.tenant_for_key(credentials.key)
        if tenant is not None:
            found.append((Via.KEY, tenant))
        for via, token, audience in (
            (Via.CONTROL_TOKEN, credentials.control_token, Audience.CONTROL),
            (Via.TRAFFIC_TOKEN, credentials.traffic_token, Audience.TRAFFIC),
        ):
            tenant = self.auth.tenant_for_token(token, sandbox_id, audience)
            if tenant is not None:
                found.append((via, tenant))
        if port is not None:
            tenant = self.auth.tenant_for_port_token(credentials.preview_token, sandbox_id, port)
            if tenant is not None:
                found.append((Via.PREVIEW_TOKEN, tenant))
        return found


def _wanted(surface: Surface) -> str:
    if surface is Surface.PORT:
        return "an X-API-Key header, a traffic token or a valid preview token is required"
    if surface is Surface.CONTEXTS:
        return "an X-API-Key header, the sandbox's access token or its traffic token is required"
    return "an X-API-Key header or the sandbox's access token is required"


__all__ = [
    "ALLOWED",
    "Admission",
    "Credentials",
    "Gate",
    "SandboxNotFound",
    "StillPaused",
    "Surface",
    "Unauthenticated",
    "Via",
]
