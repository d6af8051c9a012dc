"""Each sandbox's ways out: the server's end of the agent's egress proxy.

For a sandbox whose policy allows anything (`allowOut`), the agent listens inside as an HTTP
proxy (link/egress.py); every connection it accepts is decided here, against the sandbox's
policy as it is at that moment and the operator's ceiling (egress/policy.py). The server
resolves names itself and checks each address before connecting to it, so a name that
resolves somewhere refused stays refused; the connection is then made from the server and
its bytes ride the agent link, like a tunnel's. A refusal answers the program inside with a
403 naming the rule.

A sandbox whose policy binds secrets (issue 30) has its requests that could carry them read
and rewritten on the way (secret_egress.py): plain HTTP always, and TLS to a bound host; TLS
to any other host stays an untouched tunnel.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

import trio

from ..config import Settings
from ..egress import NetworkPolicy, decide
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

RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
READ_SIZE = 256 * 1024
POLICY = "policy: "
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
        self.hosts = {
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
        target = f"{request.host}:{request.port}"
        try:
            if self._open.get(sandbox.id, 0) >= self.max_connections:
                counters.refused += 1
                limit = f"{self.max_connections} connections out are open (INSIEN_MAX_TUNNELS)"
                await refuse_egress(link, request.conn, 503, limit)
                return
            stream, address, refusal = await self._connect(sandbox, request)
            if stream is None:
                counters.refused += 1
                status = 403 if refusal.startswith(POLICY) else 502
                refusal = refusal.removeprefix(POLICY)
                log.info(
                    "sandbox %s: egress to %s refused (%d): %s", sandbox.id, target, status, refusal
                )
                await refuse_egress(link, request.conn, status, refusal)
                return
            self._open[sandbox.id] = self._open.get(sandbox.id, 0) + 1
            counters.connections += 1
            sandbox.touch()
            before = (counters.bytes_out, counters.bytes_in)
            try:
                async with stream, open_egress(link, request.conn) as tunnel:
                    bindings = sandbox.options.network_policy.secrets
                    if bindings and (
                        request.method == "HTTP"
                        or any(b.covers_host(request.host, request.port) for b in bindings)
                    ):
                        await self._inject(sandbox, request, bindings, tunnel, stream, counters)
                    else:
                        await self._carry(sandbox, tunnel, stream, counters)
            finally:
                left = self._open.pop(sandbox.id) - 1
                if left:  # an id leaves the table with its last connection
                    self._open[sandbox.id] = left
                log.info(
                    "sandbox %s: egress to %s (%s) closed: %d bytes out, %d in",
                    sandbox.id,
                    target,
                    address,
                    counters.bytes_out - before[0],
                    counters.bytes_in - before[1],
                )
        except (AgentGone, TunnelRefused) as exc:
            log.debug("sandbox %s: egress to %s ended: %s", sandbox.id, target, exc)

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

        def count(out: int, back: int) -> None:
            counters.bytes_out += out
            counters.bytes_in += back
            sandbox.touch()

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

        job = Injection(
            sandbox.id,
            request.host,
            request.port,
            bindings,
            lambda name: self.secrets.value(sandbox.owner, name),
            used,
            refused,
        )
        client = TunnelStream(tunnel, count)
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

    async def _connect(
        self, sandbox: Sandbox, request: EgressRequest
    ) -> tuple[trio.SocketStream | None, str, str]:
        """A connection to the first address the policy admits, or why there is none
        (`policy: ...` for the policy, anything else for the network)."""
        name, addresses = await self._resolve(request.host, request.port)
        if not addresses:
            return None, "", f"{request.host} does not resolve"
        policy: NetworkPolicy = sandbox.options.network_policy
        allowed: list[IPAddress] = []
        first_refusal = ""
        for address in addresses:
            refusal = decide(policy, self.ceiling, name, address, request.port)
            if refusal is None:
                allowed.append(address)
            elif not first_refusal:
                first_refusal = refusal.reason
        if not allowed:
            return None, "", POLICY + first_refusal
        failure = ""
        for address in allowed:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    # An address, never the name: what was checked is what is connected to.
                    stream = await trio.open_tcp_stream(str(address), request.port)
                return stream, str(address), ""
            except (OSError, trio.TooSlowError) as exc:
                failure = f"could not connect to {address}:{request.port}: {exc or 'timed out'}"
        return None, "", failure

    async def _resolve(self, host: str, port: int) -> tuple[str | None, list[IPAddress]]:
        """The name asked for (None for an address literal) and its addresses, in order."""
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            return None, [ipaddress.ip_address(literal)]
        except ValueError:
            pass
        name = normalize_name(host)
        mapped = self.hosts.get(name)
        if mapped is not None:
            return name, [mapped]
        try:
            with trio.fail_after(RESOLVE_TIMEOUT):
                infos = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, trio.TooSlowError, UnicodeError):
            return name, []
        found: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address not in found:
                found.append(address)
        return name, found

    async def _carry(
        self,
        sandbox: Sandbox,
        tunnel: Tunnel,
        stream: trio.SocketStream,
        counters: EgressCounters,
    ) -> None:
        """Bytes both ways until the program inside closes (the agent then ends the tunnel)."""

        gone = (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            TunnelRefused,
            AgentGone,
        )

        async def out(cancel: trio.CancelScope) -> None:
            try:
                while (data := await tunnel.receive()) is not None:
                    await stream.send_all(data)
                    counters.bytes_out += len(data)
                    sandbox.touch()
                await stream.send_eof()
            except gone:
                pass
            finally:
                cancel.cancel()  # the program's side is closed: nothing more can be carried

        async def back(cancel: trio.CancelScope) -> None:
            try:
                while data := await stream.receive_some(READ_SIZE):
                    await tunnel.send(data)
                    counters.bytes_in += len(data)
                    sandbox.touch()
                await tunnel.send(b"", eof=True)
            except gone:
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(out, nursery.cancel_scope)
            nursery.start_soon(back, nursery.cancel_scope)
