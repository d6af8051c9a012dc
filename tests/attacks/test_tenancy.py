"""Tenants against each other and against their limits, on a server with a tenants file
(issue 5): every route refuses another tenant's sandbox exactly as a missing one; missing, wrong
and revoked keys get 401 everywhere; bursts stop at the quota; the rate limit and the connection
cap answer 429 with Retry-After; resources stay within the plan; stalled clients are dropped."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from insien.tenancy.tenants import hash_key, new_key
from insien_sandbox import AsyncSandbox, RateLimitError
from tests.backends import docker_only
from tests.conftest import Server, rss_bytes, start_server, stop_server
from tests.e2e.helpers import call, containers_of, websocket

MIB = 1024 * 1024


PLANS = {
    "alpha": 'max_sandboxes = 3\nmax_connections = 4\nmax_memory = "512m"\nmax_cpus = 0.5',
    "beta": "",
    "gamma": "create_rate = 6\ncreate_burst = 2",
}


def write_tenants_file(path: Path, keys: dict[str, str], *, revoke: tuple[str, ...] = ()) -> None:
    sections = []
    for tenant, plan in PLANS.items():
        entries = [
            f'{{ id = "{name}", sha256 = "{hash_key(key)}", '
            f"revoked = {str(name in revoke).lower()} }}"
            for name, key in keys.items()
            if name.startswith(tenant)
        ]
        sections.append(f"[tenants.{tenant}]\n{plan}\nkeys = [{', '.join(entries)}]\n")
    path.write_text("\n".join(sections))
    stat = path.stat()  # a new mtime even within one clock tick, for the reload check
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@dataclass
class Tenants:
    server: Server
    path: Path
    keys: dict[str, str]

    def write(self, *, revoke: tuple[str, ...] = ()) -> None:
        write_tenants_file(self.path, self.keys, revoke=revoke)

    @asynccontextmanager
    async def client(self, key_name: str | None) -> AsyncIterator[httpx.AsyncClient]:
        headers = {"X-API-Key": self.keys[key_name]} if key_name else {}
        async with httpx.AsyncClient(
            base_url=self.server.url, headers=headers, timeout=60
        ) as client:
            yield client


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    path = tmp_path_factory.mktemp("tenants") / "tenants.toml"
    keys = {name: new_key() for name in ("alpha", "beta", "beta-old", "beta-temp", "gamma")}
    write_tenants_file(path, keys, revoke=("beta-old",))
    process, server = start_server(
        {
            "INSIEN_TENANTS_FILE": str(path),
            "INSIEN_API_KEY": "",  # only the file's keys
            "INSIEN_HEADER_TIMEOUT": "2",
            "INSIEN_BODY_TIMEOUT": "2",
        },
        suffix="tenants",
    )
    yield Tenants(server, path, keys)
    code = stop_server(process)
    assert code == 0, server.log()[-4000:]


async def create(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/sandbox/create", json=body or None)


async def destroy_all(tenants: Tenants, key_name: str) -> None:
    async with tenants.client(key_name) as client:
        for info in (await client.get("/sandboxes", params={"state": "running"})).json()[
            "sandboxes"
        ]:
            await client.post(f"/sandbox/{info['sandboxId']}/destroy")


def every_route(sandbox_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/sandbox/{sandbox_id}/status", {}),
        ("GET", f"/sandboxes/{sandbox_id}", {}),
        ("POST", f"/sandbox/{sandbox_id}/keepalive", {}),
        ("POST", f"/sandbox/{sandbox_id}/pause", {}),
        ("POST", f"/sandbox/{sandbox_id}/resume", {}),
        ("POST", f"/sandbox/{sandbox_id}/snapshot", {}),
        ("GET", f"/sandbox/{sandbox_id}/files", {"params": {"path": "/etc/hostname"}}),
        ("PUT", f"/sandbox/{sandbox_id}/files", {"params": {"path": "x"}, "content": b"x"}),
        ("POST", f"/sandbox/{sandbox_id}/destroy", {}),
    ]


async def test_another_tenants_sandbox_is_indistinguishable_from_none(tenants: Tenants) -> None:
    async with tenants.client("alpha") as alpha, tenants.client("beta") as beta:
        created = (await create(alpha)).raise_for_status().json()
        mine = created["sandboxId"]
        missing = str(uuid.uuid4())
        try:
            for method, path, extra in every_route(mine):
                theirs = await beta.request(method, path, **extra)
                absent = await beta.request(method, path.replace(mine, missing), **extra)
                assert theirs.status_code == absent.status_code == 404, (path, theirs.text)
                assert theirs.json() == {
                    k: v.replace(missing, mine) if isinstance(v, str) else v
                    for k, v in absent.json().items()
                }
            listed = (await beta.get("/sandboxes")).json()["sandboxes"]
            assert mine not in [s["sandboxId"] for s in listed]
            # the WebSocket with beta's key is refused the same way
            url = created["agentUrl"].split("?")[0]
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(
                    url, extra_headers=[(b"X-API-Key", tenants.keys["beta"].encode())]
                ):
                    pass
            assert rejected.value.status_code == 404
            # and alpha's sandbox is untouched by all of it
            status = (await alpha.get(f"/sandboxes/{mine}")).json()
            assert status["state"] == "running"
            async with websocket(created["agentUrl"]) as ws:
                reply = await call(ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["ok"]})
                assert reply["stdout"] == "ok\n"
        finally:
            await alpha.post(f"/sandbox/{mine}/destroy")


async def test_missing_wrong_and_revoked_keys_are_refused_everywhere(tenants: Tenants) -> None:
    async with tenants.client("beta") as beta:
        created = (await create(beta)).raise_for_status().json()
    sandbox_id = created["sandboxId"]
    routes = [
        ("POST", "/sandbox/create", {}),
        ("GET", "/sandboxes", {}),
        *every_route(sandbox_id),
    ]
    try:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": tenants.keys["beta-old"]}):
            async with httpx.AsyncClient(base_url=tenants.server.url, headers=headers) as client:
                for method, path, extra in routes:
                    response = await client.request(method, path, **extra)
                    assert response.status_code == 401, (headers, path, response.text)
                    assert response.json()["code"] == "UNAUTHORIZED"
                url = created["agentUrl"].split("?")[0]
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(
                        url, extra_headers=[(k.encode(), v.encode()) for k, v in headers.items()]
                    ):
                        pass
                assert rejected.value.status_code == 401
        # revoking a key in the file takes effect without a restart
        async with tenants.client("beta") as beta:
            assert (await beta.get("/sandboxes")).status_code == 200
            tenants.write(revoke=("beta-old", "beta"))
            await until_status(beta, 401, within=1.0)  # the promise: within a second
    finally:
        tenants.write(revoke=("beta-old",))
        async with tenants.client("beta") as beta:
            await until_status(beta, 200, within=5)
            await beta.post(f"/sandbox/{sandbox_id}/destroy")


async def until_status(client: httpx.AsyncClient, status: int, *, within: float) -> None:
    """Poll a cheap route until it answers `status` (a reloaded tenants file shows this way)."""
    with trio.fail_after(within):
        while (await client.get("/sandboxes", params={"limit": 1})).status_code != status:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def close_code(ws: WebSocketConnection) -> int | None:
    with trio.fail_after(5):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code if closed.reason is not None else None


async def test_revoking_a_key_closes_its_websockets_and_voids_its_tokens(
    tenants: Tenants,
) -> None:
    """Issue 18: a token minted under a key that is then revoked opened a WebSocket, and open
    WebSockets outlived the revocation. Both end within a second now."""
    async with tenants.client("beta-temp") as temp:
        created = (await create(temp)).raise_for_status().json()
    url = created["agentUrl"]
    header = [(b"X-API-Key", tenants.keys["beta-temp"].encode())]
    try:
        async with (
            open_websocket_url(url) as by_token,
            open_websocket_url(url.split("?")[0], extra_headers=header) as by_key,
        ):
            for ws in (by_token, by_key):
                await ws.send_message(json.dumps({"id": 1, "type": "ping"}))
                assert json.loads(await ws.get_message())["type"] == "pong"
            tenants.write(revoke=("beta-old", "beta-temp"))
            revoked_at = trio.current_time()
            for ws in (by_token, by_key):
                assert (await close_code(ws)) == 1008
            assert trio.current_time() - revoked_at < 1.5
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url):
                pass
        assert rejected.value.status_code == 401
    finally:
        tenants.write(revoke=("beta-old",))
        async with tenants.client("beta") as beta:
            await until_status(beta, 200, within=5)
            await beta.post(f"/sandbox/{created['sandboxId']}/destroy")


async def test_a_burst_of_creates_stops_exactly_at_the_quota(
    tenants: Tenants, docker_client: docker.DockerClient
) -> None:
    results: list[httpx.Response] = []
    async with tenants.client("alpha") as alpha:

        async def one() -> None:
            results.append(await create(alpha))

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(one)
            statuses = sorted(r.status_code for r in results)
            assert statuses == [200] * 3 + [429] * 5, [r.text for r in results]
            refused = [r for r in results if r.status_code == 429]
            assert all(r.json()["code"] == "QUOTA_EXCEEDED" for r in refused)
            assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
            # destroying one frees exactly one place
            first = next(r for r in results if r.status_code == 200).json()["sandboxId"]
            await alpha.post(f"/sandbox/{first}/destroy")
            assert (await create(alpha)).status_code == 200
            assert (await create(alpha)).status_code == 429
        finally:
            await destroy_all(tenants, "alpha")


async def test_create_rate_limit_answers_429_with_retry_after(tenants: Tenants) -> None:
    async with tenants.client("gamma") as gamma:
        try:
            assert (await create(gamma)).status_code == 200
            assert (await create(gamma)).status_code == 200
            limited = await create(gamma)
            assert limited.status_code == 429
            assert limited.json()["code"] == "RATE_LIMITED"
            assert 1 <= int(limited.headers["Retry-After"]) <= 10  # six a minute
        finally:
            await destroy_all(tenants, "gamma")


@docker_only("checks the container's limits; tests/k8s/test_runtime.py checks a pod's")
async def test_resources_stay_within_the_plan_and_fields_are_an_allowlist(
    tenants: Tenants, docker_client: docker.DockerClient
) -> None:
    async with tenants.client("alpha") as alpha:
        for body in (
            {"resources": {"memory": "1g"}},
            {"resources": {"cpu": 1}},
            {"resources": {"pids": 1 << 23}},
            {"resources": {"memory": "lots"}},
            {"privileged": True},
            {"resources": {"network": "host"}},
            {"env": {"INSIEN_AGENT_USER": "agent"}},
        ):
            refused = await create(alpha, **body)
            assert refused.status_code == 400, (body, refused.text)
            assert refused.json()["code"] == "BAD_REQUEST"
        created = (await create(alpha, resources={"memory": "256m", "pids": 100})).json()
        try:
            info = (await alpha.get(f"/sandboxes/{created['sandboxId']}")).json()
            # cpu is capped to the plan's 0.5 even though the operator's default is 1
            assert info["resources"] == {"cpu": 0.5, "memory": 256 * MIB, "pids": 100}
            (container,) = containers_of(docker_client, created["sandboxId"])
            host = docker_client.api.inspect_container(container["Id"])["HostConfig"]
            assert host["Memory"] == host["MemorySwap"] == 256 * MIB
            assert host["NanoCpus"] == 500_000_000
            assert host["PidsLimit"] == 100
            assert host["Privileged"] is False
        finally:
            await alpha.post(f"/sandbox/{created['sandboxId']}/destroy")


async def test_many_websockets_that_never_read(tenants: Tenants) -> None:
    """alpha may hold 4 connections; 4 that flood and never read do not hurt the server."""
    before = rss_bytes(tenants.server.pid)
    async with tenants.client("alpha") as alpha:
        created = (await create(alpha)).raise_for_status().json()
        url = created["agentUrl"]
        try:
            async with trio.open_nursery() as nursery:
                opened = trio.Semaphore(0)
                release = trio.Event()

                async def silent_flooder() -> None:
                    async with open_websocket_url(url, message_queue_size=1) as ws:
                        await ws.send_message(
                            '{"id": 1, "type": "exec", "cmd": "yes", "stream": true, "timeout": 30}'
                        )
                        opened.release()
                        await release.wait()  # never reads a thing

                for _ in range(4):
                    nursery.start_soon(silent_flooder)
                for _ in range(4):
                    await opened.acquire()
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(url):
                        pass
                assert rejected.value.status_code == 429
                assert int(dict(rejected.value.headers or [])[b"retry-after"]) >= 1
                await trio.sleep(3)  # let the floods push against the back-pressure
                async with tenants.client("beta") as beta:  # another tenant is unaffected
                    assert (await beta.get("/health")).status_code == 200
                    other = (await create(beta)).raise_for_status().json()
                    async with websocket(other["agentUrl"]) as ws:
                        reply = await call(
                            ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["ok"]}
                        )
                        assert reply["stdout"] == "ok\n"
                    await beta.post(f"/sandbox/{other['sandboxId']}/destroy")
                assert rss_bytes(tenants.server.pid) - before < 64 * MIB
                release.set()
            # the slots are free again once the connections close
            with trio.fail_after(10):
                while True:
                    try:
                        async with open_websocket_url(url):
                            break
                    except ConnectionRejected:
                        await trio.sleep(0.2)
        finally:
            await alpha.post(f"/sandbox/{created['sandboxId']}/destroy")


async def test_stalled_and_unauthenticated_connections_are_closed(tenants: Tenants) -> None:
    host, port = tenants.server.url.removeprefix("http://").split(":")

    def closed_within(payload: bytes, seconds: float) -> bytes:
        with socket.create_connection((host, int(port)), timeout=seconds + 5) as sock:
            sock.sendall(payload)
            received = b""
            while chunk := sock.recv(4096):  # returns b"" once the server closes
                received += chunk
            return received

    # a request head that never finishes (slowloris), and a body that stops half-way
    assert closed_within(b"GET /health HTTP/1.1\r\nHost: x\r\n", 2) == b""
    stalled = closed_within(
        b"POST /sandbox/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        + f"X-API-Key: {tenants.keys['beta']}\r\n\r\n".encode()
        + b'{"metad',
        2,
    )
    assert b"sandboxId" not in stalled


async def test_the_sdk_passes_resources_and_raises_rate_limit_errors(tenants: Tenants) -> None:
    url = tenants.server.url
    async with AsyncSandbox(
        api_key=tenants.keys["alpha"], base_url=url, resources={"memory": "256m", "cpu": 0.25}
    ) as sandbox:
        info = await sandbox.info()
        assert info.resources == {"cpu": 0.25, "memory": 256 * MIB, "pids": 512}
        result = await sandbox.run_command("id", ["-un"])
        assert result.stdout == "user\n"

    async def create_three() -> None:  # gamma's bucket holds two
        for _ in range(3):
            async with AsyncSandbox(api_key=tenants.keys["gamma"], base_url=url) as gamma:
                await gamma.create()

    try:
        with pytest.raises(RateLimitError) as limited:
            await create_three()
        assert limited.value.code == "RATE_LIMITED"
        assert limited.value.retry_after is not None
        assert limited.value.retry_after >= 1
    finally:
        await destroy_all(tenants, "gamma")


def test_the_e2b_front_keeps_tenants_apart_and_within_quota(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2b import NotFoundException, RateLimitException
    from e2b import Sandbox as E2BSandbox

    def as_tenant(key_name: str) -> None:
        monkeypatch.setenv("E2B_API_URL", f"{tenants.server.url}/e2b")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"{tenants.server.url}/e2b")
        monkeypatch.setenv("E2B_API_KEY", tenants.keys[key_name])

    as_tenant("alpha")
    mine = E2BSandbox.create()
    try:
        as_tenant("beta")
        with pytest.raises(NotFoundException):
            E2BSandbox.get_info(mine.sandbox_id)
        with pytest.raises(NotFoundException):
            E2BSandbox.connect(mine.sandbox_id)
        assert E2BSandbox.kill(mine.sandbox_id) is False
        assert mine.sandbox_id not in {s.sandbox_id for s in E2BSandbox.list().next_items()}
        # beta's own key on alpha's sandbox's envd: the same answer as no sandbox at all
        envd = httpx.get(
            f"{tenants.server.url}/e2b/health",
            headers={"X-API-Key": tenants.keys["beta"], "E2b-Sandbox-Id": mine.sandbox_id},
        )
        assert envd.status_code == 502
        assert "was not found" in envd.json()["message"]

        as_tenant("alpha")  # a plan of three sandboxes
        more = [E2BSandbox.create(retries=0) for _ in range(2)]
        with pytest.raises(RateLimitException):
            E2BSandbox.create(retries=0)
        for sandbox in more:
            sandbox.kill()
    finally:
        as_tenant("alpha")
        mine.kill()
