"""Operating Insien (issue 16), end to end against a real server and real sandboxes:
Prometheus metrics behind their own token and on their own listener, lifecycle events as
Server-Sent Events (resumable, per tenant), webhooks delivered signed, retried and in order to
a receiver on this machine's loopback, JSON logs with request ids, and no key, token or secret
anywhere in a whole run's log."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from insien.tenancy.tenants import hash_key, new_key
from insien_sandbox import AsyncSandbox
from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import event_stream
from tests.e2e.upstreams import WebhookReceiver, webhook_receiver

HOOK_SECRET = "whsec-" + secrets.token_hex(16)
ACME_HOOK_SECRET = "whsec-" + secrets.token_hex(16)
SECRET_METADATA = "metadata-value-" + secrets.token_hex(8)


@dataclass
class Operated:
    server: Server
    acme_key: str
    metrics_token: str
    metrics_url: str
    hooks: WebhookReceiver
    acme_hooks: WebhookReceiver
    tiny_key: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    acme_key = new_key()
    tiny_key = new_key()
    token = secrets.token_urlsafe(24)
    port = free_port()
    with webhook_receiver(fail_first=2) as hooks, webhook_receiver() as acme_hooks:
        path = Path(tmp_path_factory.mktemp("ops")) / "tenants.toml"
        path.write_text(
            f'[tenants.default]\nwebhooks = [{{ url = "{hooks.url}", secret = "{HOOK_SECRET}" }}]\n'
            f'[tenants.acme]\nkeys = [{{ id = "acme-key", sha256 = "{hash_key(acme_key)}" }}]\n'
            f'webhooks = [{{ url = "{acme_hooks.url}", secret = "{ACME_HOOK_SECRET}", '
            'events = ["sandbox.ended"] }]\n'
            "[tenants.tiny]\nmax_sandboxes = 0\n"
            f'keys = [{{ id = "tiny-key", sha256 = "{hash_key(tiny_key)}" }}]\n'
        )
        process, server = start_server(
            {
                "INSIEN_TENANTS_FILE": str(path),
                "INSIEN_METRICS_TOKEN": token,
                "INSIEN_METRICS_LISTEN": f"127.0.0.1:{port}",
                "INSIEN_LOG_FORMAT": "json",
                "INSIEN_WEBHOOK_FIRST_DELAY": "0.05",
                "INSIEN_WEBHOOK_TIMEOUT": "2",
            },
            suffix="operations",
        )
        try:
            yield Operated(
                server, acme_key, token, f"http://127.0.0.1:{port}", hooks, acme_hooks, tiny_key
            )
        finally:
            assert stop_server(process) == 0
        log = server.log()
        for secret in (server.api_key, acme_key, tiny_key, token, HOOK_SECRET, ACME_HOOK_SECRET):
            assert secret not in log, "a key, token or secret reached the log"
        assert "do-not-log" not in log  # the webhook URL's own token
        assert SECRET_METADATA not in log


@asynccontextmanager
async def client(operated: Operated, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"X-API-Key": key or operated.server.api_key}
    async with httpx.AsyncClient(base_url=operated.server.url, headers=headers, timeout=60) as c:
        yield c


async def create_and_destroy(api: httpx.AsyncClient, metadata: dict[str, str] | None = None) -> str:
    body = {"metadata": metadata} if metadata else {}
    created = (await api.post("/sandbox/create", json=body)).raise_for_status().json()
    sandbox_id = str(created["sandboxId"])
    (await api.post(f"/sandbox/{sandbox_id}/destroy")).raise_for_status()
    return sandbox_id


async def read_events(
    server: Server,
    key: str,
    until: Any,
    last_id: str | None = None,
    opened: trio.Event | None = None,
) -> list[dict[str, Any]]:
    """Events from `GET /events` until `until(events)` is true."""
    seen: list[dict[str, Any]] = []
    async with event_stream(server, key, last_id) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        if opened is not None:
            opened.set()
        while (event := await stream.next()) is not None:
            seen.append({"sse_id": event["id"], "event": event["event"], **event["data"]})
            if until(seen):
                break
    return seen


def test_events_stream_resume_and_stay_with_their_tenant(operated: Operated) -> None:
    server = operated.server

    def ended(seen: list[dict[str, Any]]) -> bool:
        return bool(seen[-1]["type"] == "sandbox.ended")

    async def scenario() -> None:
        async with client(operated) as api, client(operated, operated.acme_key) as acme:
            ours: list[dict[str, Any]] = []
            theirs: list[dict[str, Any]] = []
            async with trio.open_nursery() as nursery:
                opened = [trio.Event(), trio.Event()]
                ours_done = trio.Event()

                async def follow_ours() -> None:
                    ours.extend(await read_events(server, server.api_key, ended, opened=opened[0]))
                    ours_done.set()

                async def follow_theirs() -> None:
                    theirs.extend(
                        await read_events(server, operated.acme_key, ended, opened=opened[1])
                    )

                nursery.start_soon(follow_ours)
                nursery.start_soon(follow_theirs)
                with trio.fail_after(30):
                    for ready in opened:
                        await ready.wait()
                    mine = await create_and_destroy(api)
                    await ours_done.wait()  # ours ends first: acme's stream sees none of it
                    acme_sandbox = await create_and_destroy(acme)
            assert [e["type"] for e in ours] == [
                "sandbox.created",
                "sandbox.ready",
                "sandbox.ended",
            ]
            assert {e["sandboxId"] for e in ours} == {mine}
            assert all(e["tenant"] == "default" and e["event"] == e["type"] for e in ours)
            assert ours[0]["details"]["source"] in ("pool", "cold")
            assert ours[2]["details"]["reason"] == "destroyed"
            assert [e["sandboxId"] for e in theirs] == [acme_sandbox] * 3
            # Resumed after the first: the two that came after it, then new ones.
            again = await read_events(
                server, server.api_key, lambda s: len(s) == 2, last_id=ours[0]["sse_id"]
            )
            assert [e["id"] for e in again] == [e["id"] for e in ours[1:]]

    trio.run(scenario)


def test_webhooks_arrive_signed_in_order_after_retries(operated: Operated) -> None:
    async def scenario() -> str:
        async with client(operated) as api, client(operated, operated.acme_key) as acme:
            mine = await create_and_destroy(api)
            await create_and_destroy(acme)
        with trio.fail_after(30):
            while not any(  # noqa: ASYNC110 (the receiver is a thread)
                json.loads(b)["sandboxId"] == mine and json.loads(b)["type"] == "sandbox.ended"
                for _, b in operated.hooks.delivered()
            ):
                await trio.sleep(0.1)
            while not operated.acme_hooks.delivered():  # noqa: ASYNC110
                await trio.sleep(0.1)
        return mine

    mine = trio.run(scenario)
    got = [(h, json.loads(b), b) for h, b in operated.hooks.delivered()]
    kinds = [event["type"] for _, event, _ in got if event["sandboxId"] == mine]
    assert kinds == ["sandbox.created", "sandbox.ready", "sandbox.ended"]
    assert operated.hooks.attempts >= len(got) + 2  # the first two were answered 500, and retried
    for headers, event, body in got:
        assert headers["insien-event-id"] == event["id"]
        timestamp, mac = (part.split("=", 1)[1] for part in headers["insien-signature"].split(","))
        signed = f"{timestamp}.".encode() + body
        assert hmac.compare_digest(
            mac, hmac.new(HOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
        )
    # acme asked for `sandbox.ended` only, and gets only its own
    acme_events = [json.loads(b) for _, b in operated.acme_hooks.delivered()]
    assert {e["type"] for e in acme_events} == {"sandbox.ended"}
    assert {e["tenant"] for e in acme_events} == {"acme"}


def test_metrics_need_their_token_and_count_what_happened(operated: Operated) -> None:
    async def scenario() -> tuple[str, str]:
        async with client(operated) as api:
            created = (
                (await api.post("/sandbox/create", json={"metadata": {"team": SECRET_METADATA}}))
                .raise_for_status()
                .json()
            )
            sandbox_id = created["sandboxId"]
            async with AsyncSandbox(
                api_key=operated.server.api_key,
                base_url=operated.server.url,
                sandbox_id=sandbox_id,
            ) as box:
                assert (await box.commands.run("echo hi")).stdout == "hi\n"
                await box.files.write("/tmp/blob", b"x" * 65536)
            assert (await api.get("/metrics")).status_code == 401  # the API key is not the token
            bad = await api.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
            text = (
                (
                    await api.get(
                        "/metrics", headers={"Authorization": f"Bearer {operated.metrics_token}"}
                    )
                )
                .raise_for_status()
                .text
            )
            async with httpx.AsyncClient() as plain:  # the metrics listener: no token, no API
                listened = (await plain.get(f"{operated.metrics_url}/metrics")).raise_for_status()
                assert "insien_sandboxes" in listened.text
                assert (await plain.get(f"{operated.metrics_url}/sandboxes")).status_code == 404
                assert (await plain.get(f"{operated.metrics_url}/health")).status_code == 200
            (await api.post(f"/sandbox/{sandbox_id}/destroy")).raise_for_status()
            return text, sandbox_id

    text, sandbox_id = trio.run(scenario)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert (
        value("insien_creates_total", outcome="ok", source="cold")
        + value("insien_creates_total", outcome="ok", source="pool")
        >= 1
    )
    assert value("insien_sandboxes", state="running", template="insien-sandbox:latest") >= 1
    assert value("insien_agent_request_seconds_count", type="exec") >= 1
    assert value("insien_agent_bytes_total", kind="files", direction="out") >= 65536
    assert value("insien_agent_bytes_total", kind="commands", direction="in") > 0
    assert value("insien_events_total") >= 2
    assert value("insien_webhook_deliveries_total", outcome="delivered") >= 1
    assert (
        value("insien_create_seconds_count", source="cold")
        + value("insien_create_seconds_count", source="pool")
        >= 1
    )
    for never in (SECRET_METADATA, sandbox_id, operated.server.api_key, operated.acme_key):
        assert never not in text


def test_requests_carry_ids_into_json_logs(operated: Operated) -> None:
    async def scenario() -> None:
        async with client(operated) as api:
            answer = await api.get("/health")
            assert len(answer.headers["x-request-id"]) >= 8
            mine = "trace-" + secrets.token_hex(6)
            created = await api.post("/sandbox/create", headers={"X-Request-Id": mine})
            assert created.headers["x-request-id"] == mine
            sandbox_id = created.json()["sandboxId"]
            (await api.post(f"/sandbox/{sandbox_id}/destroy")).raise_for_status()
            lines = [
                json.loads(line)
                for line in operated.server.log().splitlines()
                if line.startswith("{")
            ]
            assert lines, "JSON log lines"
            assert {"time", "level", "logger", "message"} <= set(lines[0])
            traced = [line for line in lines if line.get("requestId") == mine]
            assert traced, "a line logged while creating carries the caller's request id"
            assert any(line.get("tenant") == "default" for line in traced)

    trio.run(scenario)


def test_every_kind_of_lifecycle_change_is_an_event(operated: Operated) -> None:
    """Paused, resumed, a snapshot made, and a create refused by the plan, each as its event."""
    server = operated.server

    async def scenario() -> None:
        async with client(operated) as api, client(operated, operated.tiny_key) as tiny:
            created = (await api.post("/sandbox/create")).raise_for_status().json()
            sandbox_id = created["sandboxId"]
            seen: list[dict[str, Any]] = []
            refused: list[dict[str, Any]] = []
            async with trio.open_nursery() as nursery:
                opened = [trio.Event(), trio.Event()]

                async def follow() -> None:
                    seen.extend(
                        await read_events(
                            server,
                            server.api_key,
                            lambda s: s[-1]["type"] == "sandbox.ended",
                            opened=opened[0],
                        )
                    )

                async def follow_tiny() -> None:
                    refused.extend(
                        await read_events(server, operated.tiny_key, bool, opened=opened[1])
                    )

                nursery.start_soon(follow)
                nursery.start_soon(follow_tiny)
                with trio.fail_after(60):
                    for ready in opened:
                        await ready.wait()
                    (await api.post(f"/sandbox/{sandbox_id}/pause")).raise_for_status()
                    (await api.post(f"/sandbox/{sandbox_id}/resume")).raise_for_status()
                    snap = (await api.post(f"/sandbox/{sandbox_id}/snapshot")).raise_for_status()
                    template = snap.json()["template"]
                    (await api.post(f"/sandbox/{sandbox_id}/destroy")).raise_for_status()
                    assert (await tiny.post("/sandbox/create")).status_code == 429
            (await api.delete(f"/snapshots/{template}")).raise_for_status()
        assert [e["type"] for e in seen] == [
            "sandbox.paused",
            "sandbox.resumed",
            "sandbox.snapshot",
            "sandbox.ended",
        ]
        assert seen[2]["details"]["template"] == template
        (quota,) = refused
        assert (quota["type"], quota["tenant"], quota["sandboxId"]) == (
            "quota.refused",
            "tiny",
            None,
        )
        assert quota["details"]["reason"] == "sandboxes"

    trio.run(scenario)
