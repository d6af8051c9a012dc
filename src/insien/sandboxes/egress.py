"""Each sandbox's ways out: the server's end of the agent's egress proxy.

For a sandbox whose policy allows anything (`allowOut`), the agent listens inside as an HTTP
proxy (link/egress.py); this module runs that proxy's far end for each such sandbox, its
counters and its events. Each connection it accepts is decided against the sandbox's policy
as it is at that moment and the operator's ceiling (egress/connection.py, pure) between the
I/O steps (link/outbound.py): the name is resolved by the server itself and each address
checked before it is connected to, so a name that resolves somewhere refused stays refused;
the connection is then made from the server and its bytes ride the agent link, like a
tunnel's. A refusal answers the program inside with a 403 naming the rule.

A sandbox whose policy binds secrets (issue 30) has its requests that could carry them read
and rewritten on the way (secret_egress.py): plain HTTP always, and TLS to a bound host; TLS
to any other host stays an untouched tunnel.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..config import Settings
from ..egress.connection import Refused, admitted, reads_requests, room, target
from ..egress.policy import SecretBinding
from ..egress.rules import IPAddress, normalize_name
from ..link import AgentGone
from ..link.egress import (
    EgressRequest,
    EgressUnavailable,
    listen_egress,
    open_egress,
    refuse_egress,
)
from ..link.outbound import connect_first, relay, resolve
from ..link.tunnel import Tunnel, TunnelRefused
from ..operations.events import EventLog
from ..operations.logs import long_lived_task
from ..secrets.ca import EgressCA, upstream_context
from ..secrets.store import SecretStore, load_key
from .sandbox import Sandbox
from .secret_egress import (
    Injection,
    TunnelStream,
    UpstreamFailed,
    serve_injecting,
    tls_client,
    tls_upstream,
)

log = logging.getLogger("insien.egress")

SECRET_USED = "secret.used"


@dataclass
class EgressCounters:
    """What a sandbox's egress has done, for its metrics and its network route."""

    connections: int = 0
    refused: int = 0
    bytes_out: int = 0
    """From the sandbox to the far end."""
    bytes_in: int = 0
    secrets_used: int = 0
    """Requests the proxy added a secret to (one per secret per request)."""

    def info(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "refused": self.refused,
            "bytesOut": self.bytes_out,
            "bytesIn": self.bytes_in,
            "secretsUsed": self.secrets_used,
        }


class Egress:
    """Runs the proxy's far end for every sandbox whose policy allows egress."""

    def __init__(self, settings: Settings) -> None:
        self.ceiling = settings.egress_ceiling()
        self.hosts: dict[str, IPAddress] = {
            normalize_name(name): ipaddress.ip_address(address)
            for name, address in settings.egress_hosts.items()
        }
        self.max_connections = settings.max_tunnels
        self._serving: dict[str, trio.CancelScope] = {}
        self._open: dict[str, int] = {}
        self.counters: dict[str, EgressCounters] = {}
        self._of_ended = EgressCounters()
        """What sandboxes that ended had counted, for the server's totals."""
        key = settings.secrets_key.get_secret_value() if settings.secrets_key else None
        self.secrets = SecretStore(
            settings.state_dir / "secrets", load_key(key, settings.secrets_key_file)
        )
        """Every tenant's secrets (the REST routes manage them, the proxy reads them)."""
        self.ca = EgressCA(
            settings.state_dir / "egress-ca", f"Insien egress CA {settings.instance}"
        )
        self.upstream_tls = upstream_context(settings.egress_ca_file)
        self.events: EventLog | None = None
        """Where `secret.used` goes (the manager's event log, set by it)."""
        self._listening_with: dict[str, tuple[dict[str, str], str | None]] = {}

    def totals(self) -> EgressCounters:
        """Every sandbox's counters added up, since the server started (for `/metrics`)."""
        total = EgressCounters(**vars(self._of_ended))
        for counters in self.counters.values():
            total.connections += counters.connections
            total.refused += counters.refused
            total.bytes_out += counters.bytes_out
            total.bytes_in += counters.bytes_in
            total.secrets_used += counters.secrets_used
        return total

    def counters_for(self, sandbox_id: str) -> EgressCounters:
        return self.counters.setdefault(sandbox_id, EgressCounters())

    async def apply(self, sandbox: Sandbox, nursery: trio.Nursery) -> None:
        """Make the proxy match the sandbox's policy: on (returning once commands started
        from now on get the proxy variables) or off."""
        wanted = sandbox.options.network_policy.egress and sandbox.link.connected
        serving = self._serving.get(sandbox.id)
        if (
            wanted
            and serving is not None
            and self._setup(sandbox) != self._listening_with.get(sandbox.id)
        ):
            # New placeholders or a first binding: the agent learns them by a new listen
            # (connections carried by the old one are cut).
            serving.cancel()
            serving = None
        if wanted and serving is None:
            await nursery.start(self._serve, sandbox)
        elif not wanted and serving is not None:
            serving.cancel()

    def _setup(self, sandbox: Sandbox) -> tuple[dict[str, str], str | None]:
        """What the agent is told besides listening: placeholders, and the CA to trust."""
        policy = sandbox.options.network_policy
        if not policy.secrets:
            return {}, None
        return policy.placeholder_environment(), self.ca.certificate_pem()

    def stop(self, sandbox_id: str) -> None:
        scope = self._serving.pop(sandbox_id, None)
        if scope is not None:
            scope.cancel()
        self._listening_with.pop(sandbox_id, None)
        ended = self.counters.pop(sandbox_id, None)
        if ended is not None:
            self._of_ended.connections += ended.connections
            self._of_ended.refused += ended.refused
            self._of_ended.bytes_out += ended.bytes_out
            self._of_ended.bytes_in += ended.bytes_in
            self._of_ended.secrets_used += ended.secrets_used

    async def _serve(self, sandbox: Sandbox, *, task_status: trio.TaskStatus[None]) -> None:
        long_lived_task(sandbox.id, sandbox.owner or None)
        scope = trio.CancelScope()
        self._serving[sandbox.id] = scope
        started = False
        env, ca = setup = self._setup(sandbox)
        try:
            with scope:
                async with (
                    listen_egress(sandbox.link, env, ca) as listener,
                    trio.open_nursery() as nursery,
                ):
                    self._listening_with[sandbox.id] = setup
                    log.info("sandbox %s: egress proxy on port %d", sandbox.id, listener.port)
                    task_status.started()
                    started = True
                    async for request in listener:
                        nursery.start_soon(self._connection, sandbox, request)
        except (EgressUnavailable, AgentGone) as exc:
            log.warning("sandbox %s: no egress: %s", sandbox.id, exc)
        finally:
            if self._serving.get(sandbox.id) is scope:
                del self._serving[sandbox.id]
            if not started:
                task_status.started()

    async def _connection(self, sandbox: Sandbox, request: EgressRequest) -> None:
        counters = self.counters_for(sandbox.id)
        link = sandbox.link
        destination = f"{request.host}:{request.port}"
        try:
            full = room(self._open.get(sandbox.id, 0), self.max_connections)
            if full is not None:
                counters.refused += 1
                await refuse_egress(link, request.conn, full.status, full.reason)
                return
            connected = await self._connect(sandbox, request)
            if isinstance(connected, Refused):
                counters.refused += 1
                log.info(
                    "sandbox %s: egress to %s refused (%d): %s",
                    sandbox.id,
                    destination,
                    connected.status,
                    connected.reason,
                )
                await refuse_egress(link, request.conn, connected.status, connected.reason)
                return
            stream, address = connected
            self._open[sandbox.id] = self._open.get(sandbox.id, 0) + 1
            counters.connections += 1
            sandbox.touch()
            before = (counters.bytes_out, counters.bytes_in)
            try:
                async with stream, open_egress(link, request.conn) as tunnel:
                    policy = sandbox.options.network_policy
                    if reads_requests(policy, request.method, request.host, request.port):
                        await self._inject(
                            sandbox, request, policy.secrets, tunnel, stream, counters
                        )
                    else:
                        await relay(tunnel, stream, self._mover(sandbox, counters))
            finally:
                left = self._open.pop(sandbox.id) - 1
                if left:  # an id leaves the table with its last connection
                    self._open[sandbox.id] = left
                log.info(
                    "sandbox %s: egress to %s (%s) closed: %d bytes out, %d in",
                    sandbox.id,
                    destination,
                    address,
                    counters.bytes_out - before[0],
                    counters.bytes_in - before[1],
                )
        except (AgentGone, TunnelRefused) as exc:
            log.debug("sandbox %s: egress to %s ended: %s", sandbox.id, destination, exc)

    async def _inject(
        self,
        sandbox: Sandbox,
        request: EgressRequest,
        bindings: tuple[SecretBinding, ...],
        tunnel: Tunnel,
        stream: trio.SocketStream,
        counters: EgressCounters,
    ) -> None:
        """A request the sandbox's secrets may go out in (secret_egress.py)."""

        def used(secret: str, method: str, path: str) -> None:
            counters.secrets_used += 1
            # Names only: the event never carries the value (nor the query, which may).
            log.info(
                "sandbox %s: secret %r added to %s %s:%d%s",
                sandbox.id,
                secret,
                method,
                request.host,
                request.port,
                path,
            )
            if self.events is not None:
                self.events.publish(
                    SECRET_USED,
                    sandbox.owner,
                    sandbox.id,
                    secret=secret,
                    host=request.host,
                    port=request.port,
                    method=method,
                    path=path[:1024],
                )

        def refused() -> None:
            counters.refused += 1

        if self.secrets.available:  # read now, in a worker thread: `value` is a memory read
            await self.secrets.load(sandbox.owner)
        job = Injection(
            sandbox.id,
            request.host,
            request.port,
            bindings,
            lambda name: self.secrets.value(sandbox.owner, name),
            used,
            refused,
        )
        client = TunnelStream(tunnel, self._mover(sandbox, counters))
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        try:
            if request.method == "HTTP":

                async def plain() -> trio.abc.Stream:
                    return stream

                await serve_injecting(job, client, plain)
                await client.aclose()
                return
            secured = await tls_client(client, self.ca.server_context(request.host))
            if secured is None:
                log.info(
                    "sandbox %s: TLS to %s:%d was not accepted by the client (does it trust "
                    "the egress CA?)",
                    sandbox.id,
                    request.host,
                    request.port,
                )
                return

            async def secure() -> trio.abc.Stream:
                return await tls_upstream(stream, request.host, self.upstream_tls)

            async with secured:
                await serve_injecting(job, secured, secure)
        except (*gone, UpstreamFailed) as exc:
            log.debug("sandbox %s: egress to %s ended: %s", sandbox.id, request.host, exc)

    def _mover(self, sandbox: Sandbox, counters: EgressCounters) -> Callable[[int, int], None]:
        """What hears of bytes carried (out, back): the sandbox's counters, and its activity."""

        def moved(out: int, back: int) -> None:
            counters.bytes_out += out
            counters.bytes_in += back
            sandbox.touch()

        return moved

    async def _connect(
        self, sandbox: Sandbox, request: EgressRequest
    ) -> tuple[trio.SocketStream, IPAddress] | Refused:
        """A connection to the first address the policy admits (egress/connection.py decides,
        link/outbound.py resolves and connects), or why there is none."""
        wanted = target(request.host, self.hosts)
        if wanted.known is not None:
            addresses = [wanted.known]
        else:
            assert wanted.name is not None  # only a literal has no name, and it is known
            addresses = await resolve(wanted.name, request.port)
        policy = sandbox.options.network_policy
        allowed = admitted(policy, self.ceiling, request.host, wanted.name, addresses, request.port)
        if isinstance(allowed, Refused):
            return allowed
        connected = await connect_first(allowed, request.port)
        return Refused(502, connected) if isinstance(connected, str) else connected
