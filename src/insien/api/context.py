"""What the routes need from the rest of the server, handed to them at app creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from quart import Request, Websocket

from ..config import Settings
from ..link.budget import MIB
from ..operations.logs import tenant_id
from ..protocol import ErrorCode
from ..sandboxes.access import Gate
from ..sandboxes.manager import SandboxManager
from ..sandboxes.templates import TemplateBuilds
from ..tenancy.auth import Authenticator
from ..tenancy.budgets import TenantBudgets
from ..tenancy.tenants import Tenant
from .background import Background
from .errors import ApiError
from .signed_urls import EnvdTokens


@dataclass(frozen=True)
class Services:
    settings: Settings
    manager: SandboxManager
    auth: Authenticator
    budgets: TenantBudgets = field(default_factory=lambda: TenantBudgets(96 * MIB))
    """Bytes held for clients that have not read them yet, per tenant (tenancy/budgets.py)."""
    background: Background = field(default_factory=Background)
    """Tasks that outlive their request; the server runs it (see background.py)."""

    @cached_property
    def gate(self) -> Gate:
        """Every credential x surface decision, and what admitted callers hold: connections,
        their byte budgets, tunnels (sandboxes/access.py)."""
        return Gate(
            self.manager, self.auth, budgets=self.budgets, max_tunnels=self.settings.max_tunnels
        )

    @cached_property
    def envd_tokens(self) -> EnvdTokens:
        """The envd access tokens the E2B front handed out: what signed file URLs are
        checked against (signed_urls.py)."""
        return EnvdTokens()

    @cached_property
    def templates(self) -> TemplateBuilds:
        """E2B template builds (sandboxes/templates.py), on the manager's runtime."""
        settings = self.settings

        def operator(name: str) -> str | None:
            """An operator's template by the name E2B's SDKs give it, else None."""
            if name == "base":
                return settings.agent_image
            if name in settings.e2b_templates:
                return settings.e2b_templates[name]
            if name.startswith("code-interpreter"):
                return settings.interpreter_image
            return None

        manager = self.manager
        return TemplateBuilds(manager.runtime, settings, manager.snapshots, operator)

    def tenant_from_key(self, request: Request | Websocket) -> Tenant:
        tenant = self.auth.tenant_for_key(request.headers.get("X-API-Key"))
        if tenant is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")
        tenant_id.set(tenant.id)  # the request's log lines say whose it was
        return tenant

    def public_base(self, request: Request) -> str:
        """Where clients reach this server: INSIEN_PUBLIC_URL, or what the request used."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def agent_url(self, request: Request, sandbox_id: str, token: str) -> str:
        if self.settings.public_url:
            base = self.settings.public_url.rstrip("/")
        elif self.settings.ws_port is not None:
            base = f"{request.scheme}://{with_port(request.host, self.settings.ws_port)}"
        else:
            base = f"{request.scheme}://{request.host}"
        base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}/agent/{sandbox_id}?token={token}"


def with_port(host: str, port: int) -> str:
    """`host[:port]` (an IPv6 literal in brackets included) with its port replaced."""
    name, colon, tail = host.rpartition(":")
    if colon and "]" not in tail and (not name.startswith("[") or name.endswith("]")):
        host = name
    return f"{host}:{port}"
