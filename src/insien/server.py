"""`insien serve`: one trio nursery tree holding the sandbox manager and the HTTP server.

SIGINT or SIGTERM (or the caller's `stop` event) starts a graceful shutdown: the manager lets
go of its sandboxes without ending them (clients are told 1012, a restart recovers them; with
INSIEN_SHUTDOWN_ENDS_SANDBOXES they end instead), and hypercorn stops accepting and lets
requests finish, up to the graceful timeout.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from ._hypercorn import contain_connection_errors
from ._memory import return_large_blocks
from .api.context import Services
from .app import create_asgi
from .config import Settings
from .operations.webhooks import DeliveryPolicy, Webhooks
from .runtime.base import ImageNotFound, ImageStore, Runtime
from .runtime.docker import DockerRuntime
from .sandboxes.manager import SandboxManager
from .sandboxes.provenance import Sealer, load_key
from .tenancy.auth import Authenticator
from .tenancy.budgets import TenantBudgets
from .tenancy.tenants import TenantDirectory

log = logging.getLogger("insien.server")

WEBSOCKET_PING_INTERVAL = 20.0


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    if settings.ws_port is not None and settings.ws_port != settings.port:
        # The original Node.js design served WebSockets on a port of their own; the same app
        # answers on both.
        config.bind.append(f"{settings.host}:{settings.ws_port}")
    if settings.metrics_listen is not None:
        config.bind.append(settings.metrics_listen)
    config.graceful_timeout = settings.graceful_timeout
    config.websocket_max_message_size = settings.max_message_bytes
    config.websocket_ping_interval = WEBSOCKET_PING_INTERVAL
    # A connection that has not sent a whole request head within this is closed (slowloris,
    # unauthenticated idlers); bodies have their own deadline in the ASGI layer.
    config.keep_alive_timeout = settings.header_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def make_authenticator(settings: Settings) -> Authenticator:
    """With no key configured a random one is made and printed once, so the server is never open.

    With a tenants file and no API_KEY, only the file's keys are accepted.
    """
    api_key: str | None
    if settings.api_key is not None:
        api_key = settings.api_key.get_secret_value()
    elif settings.tenants_file is not None:
        api_key = None
    else:
        api_key = secrets.token_urlsafe(24)
        print(
            f"No API key configured; generated one for this run: {api_key}\n"
            "(set INSIEN_API_KEY or API_KEY to choose your own)",
            file=sys.stderr,
            flush=True,
        )
    secret = (
        settings.jwt_secret.get_secret_value()
        if settings.jwt_secret is not None
        else secrets.token_urlsafe(32)
    )
    tenants = TenantDirectory(
        api_key=api_key,
        default_plan=settings.default_plan,
        operator_max=settings.max_resources,
        path=settings.tenants_file,
    )
    return Authenticator(tenants, secret, settings.token_ttl)


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            return


async def serve(
    settings: Settings,
    authenticator: Authenticator | None = None,
    *,
    handle_signals: bool = True,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `stop` is set or a signal arrives; reports the bound URLs through task_status."""
    return_large_blocks()
    auth = authenticator or make_authenticator(settings)
    stop = stop if stop is not None else trio.Event()
    async with open_runtime(settings) as runtime:
        if isinstance(runtime, ImageStore) and not await runtime.image_exists(settings.agent_image):
            raise ImageNotFound(
                f"sandbox image {settings.agent_image!r} is missing; build it with "
                "`insien image build`"
            )
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        sealer = Sealer(load_key(secret, settings.state_dir))
        webhooks = Webhooks(
            auth.webhooks,
            DeliveryPolicy(
                timeout=settings.webhook_timeout,
                retry_for=settings.webhook_retry_seconds,
                first_delay=settings.webhook_first_delay,
                queue=settings.webhook_queue,
            ),
        )
        # Webhooks outlive the manager, so the events of its shutdown (sandboxes ended) are
        # sent too, within the graceful timeout.
        async with trio.open_nursery() as delivery:
            await delivery.start(webhooks.run)
            try:
                await _serve_with(
                    settings, auth, runtime, sealer, webhooks, stop, handle_signals, task_status
                )
            finally:
                with trio.CancelScope(shield=True):
                    await webhooks.drain(settings.graceful_timeout)
                webhooks.close()


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Where sandboxes run (INSIEN_RUNTIME_BACKEND): this host's Docker Engine, or a
    Kubernetes namespace."""
    if settings.runtime_backend == "kubernetes":
        from .runtime.kubernetes import KubernetesRuntime

        async with KubernetesRuntime.open(
            settings.k8s_kubeconfig,
            settings.k8s_namespace,
            host_network=settings.k8s_host_network,
            pull_policy=settings.k8s_image_pull_policy,
            runtime_dir=settings.k8s_agent_runtime_dir,
        ) as kubernetes:
            yield kubernetes
        return
    docker_runtime = await DockerRuntime.connect()
    try:
        yield docker_runtime
    finally:
        docker_runtime.close()


async def _serve_with(
    settings: Settings,
    auth: Authenticator,
    runtime: Runtime,
    sealer: Sealer,
    webhooks: Webhooks,
    stop: trio.Event,
    handle_signals: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """The manager and the HTTP server, until `stop`."""
    async with SandboxManager.open(
        runtime, settings, sealer, tenant_exists=auth.tenant_exists
    ) as manager:
        manager.events.subscribe(webhooks.offer)
        live_state = manager.live_state
        manager.metrics.read_live_state_from(
            lambda: replace(live_state(), webhooks=vars(webhooks.counters).copy())
        )
        services = Services(
            settings=settings,
            manager=manager,
            auth=auth,
            budgets=TenantBudgets(settings.tenant_buffer_bytes),
        )
        app = create_asgi(services)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.background.run)
            # The signal watcher would otherwise outlive a stop set by the caller.
            signals = trio.CancelScope()
            if handle_signals:

                async def watch_signals() -> None:
                    with signals:
                        await _stop_on_signal(stop)

                nursery.start_soon(watch_signals)

            async def shutdown_trigger() -> None:
                await stop.wait()
                if not settings.shutdown_ends_sandboxes:
                    # Let go of the agents first, so connected clients are told "restart"
                    # (1012) and nothing in flight is cancelled in the sandboxes.
                    manager.detach_all()

            contain_connection_errors()  # see _hypercorn.py: one bad connection, not all
            binds = await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    app,
                    hypercorn_config(settings),
                    shutdown_trigger=shutdown_trigger,
                    mode="asgi",
                )
            )
            for bind in binds:
                # One write: print() writes the newline apart, and a log line from another
                # thread could land between (tests read the URL from this line).
                sys.stderr.write(f"Insien listening on {bind}\n")
                sys.stderr.flush()
            task_status.started(binds)
            await stop.wait()
            signals.cancel()
            services.background.close()
            # hypercorn returns once its graceful shutdown is done; then stop the signal task.
