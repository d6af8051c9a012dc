"""Prometheus metrics for `GET /metrics`, from prometheus_client with a registry of the
server's own (never the process-global one, so two servers in one process stay apart).

Counters and histograms are updated where things happen (the manager, the link, the fronts);
what is a state rather than an event (sandboxes by state, pool size, bytes moved) is read from
the core when Prometheus scrapes. Labels stay few and bounded: templates other than the
operator's (snapshots) are one label `snapshot`, request types past the first
MAX_REQUEST_TYPES are `other`, and tenants label nothing unless the operator asks
(INSIEN_METRICS_TENANT_LABELS). No metadata, key or token is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_TYPES = 64
CREATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0)


@dataclass
class LiveState:
    """What the core reports at scrape time."""

    sandboxes: list[tuple[str, str, str]] = field(default_factory=list)
    """(state, template label, tenant) of each sandbox the server holds."""
    pool_ready: dict[str, int] = field(default_factory=dict)
    """Ready pooled sandboxes by template label."""
    traffic: dict[tuple[str, str], int] = field(default_factory=dict)
    """Bytes through agent links since the server started, by (kind, direction)."""
    egress: dict[str, int] = field(default_factory=dict)
    """Bytes carried for egress connections by direction (server-side counters)."""
    webhooks: dict[str, int] = field(default_factory=dict)
    """Webhook deliveries by outcome (delivered, retried, failed, dropped)."""
    events: int = 0
    """Lifecycle events published since the server started."""


class Metrics:
    """The server's instruments; `render()` is the `/metrics` body."""

    def __init__(self, *, tenant_labels: bool = False) -> None:
        self.tenant_labels = tenant_labels
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.creates = Counter(
            "insien_creates",
            "Sandbox creates by outcome (ok, error, quota) and source (pool, cold).",
            ["outcome", "source"],
            registry=registry,
        )
        self.create_seconds = Histogram(
            "insien_create_seconds",
            "Create to ready (the agent answering), by source.",
            ["source"],
            buckets=CREATE_BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "insien_agent_request_seconds",
            "Agent requests from send to final answer, by message type.",
            ["type"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.pool_misses = Counter(
            "insien_pool_misses",
            "Creates a warm pool had a profile for but no ready sandbox (they started cold).",
            ["template"],
            registry=registry,
        )
        self.quota_refusals = Counter(
            "insien_quota_refusals",
            "Requests refused by a tenant's plan, by reason.",
            ["reason"],
            registry=registry,
        )
        self.ended = Counter(
            "insien_sandboxes_ended",
            "Sandboxes ended, by reason (agent losses are agent_exited, oom, container_gone, "
            "evicted, agent_protocol_error).",
            ["reason"],
            registry=registry,
        )
        self.websockets = Gauge(
            "insien_websockets_open", "Client WebSockets open.", registry=registry
        )
        self.recovered = Gauge(
            "insien_recovered_at_start",
            "What the start-up recovery found, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._types: set[str] = set()
        self._live: Callable[[], LiveState] = LiveState
        registry.register(_LiveCollector(self))

    def read_live_state_from(self, live: Callable[[], LiveState]) -> None:
        self._live = live

    def request_done(self, request_type: str, seconds: float) -> None:
        if request_type not in self._types:
            if len(self._types) >= MAX_REQUEST_TYPES:
                request_type = "other"
            else:
                self._types.add(request_type)
        self.request_seconds.labels(request_type).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # the families vary with what is running: nothing to check up front

    def collect(self) -> Iterator[Metric]:
        live = self._metrics._live()
        tenant = self._metrics.tenant_labels
        sandboxes = GaugeMetricFamily(
            "insien_sandboxes",
            "Sandboxes the server holds, by state and template"
            + (" and tenant." if tenant else "."),
            labels=["state", "template", *(["tenant"] if tenant else [])],
        )
        counts: dict[tuple[str, ...], int] = {}
        for state, template, owner in live.sandboxes:
            key: tuple[str, ...] = (state, template, owner) if tenant else (state, template)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            sandboxes.add_metric(list(key), count)
        yield sandboxes
        pool = GaugeMetricFamily(
            "insien_pool_ready", "Ready sandboxes in the warm pools.", labels=["template"]
        )
        for template, ready in sorted(live.pool_ready.items()):
            pool.add_metric([template], ready)
        yield pool
        traffic = CounterMetricFamily(
            "insien_agent_bytes",
            "Bytes to (out) and from (in) sandboxes' agents, by what they were for "
            "(commands, files, ports, egress, code).",
            labels=["kind", "direction"],
        )
        for (kind, direction), total in sorted(live.traffic.items()):
            traffic.add_metric([kind, direction], total)
        yield traffic
        egress = CounterMetricFamily(
            "insien_egress_bytes",
            "Bytes carried for sandboxes' connections out, by direction.",
            labels=["direction"],
        )
        for direction, total in sorted(live.egress.items()):
            egress.add_metric([direction], total)
        yield egress
        hooks = CounterMetricFamily(
            "insien_webhook_deliveries", "Webhook deliveries by outcome.", labels=["outcome"]
        )
        for outcome, total in sorted(live.webhooks.items()):
            hooks.add_metric([outcome], total)
        yield hooks
        yield CounterMetricFamily("insien_events", "Lifecycle events published.", value=live.events)
