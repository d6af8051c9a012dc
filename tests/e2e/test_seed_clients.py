"""A client that knows only the seed's README: REST with curl-like calls, RPC on agentUrl."""

from __future__ import annotations

import re
import socket

import docker
import trio
from trio_websocket import WebSocketConnection

from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, http, receive, sandbox, websocket

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def test_seed_rest_shapes(server: Server) -> None:
    async with http(server) as client:
        created = (await client.post("/sandbox/create")).json()
        assert set(created) == {"sandboxId", "agentUrl"}
        sandbox_id = created["sandboxId"]
        assert UUID.match(sandbox_id)
        assert created["agentUrl"].startswith(
            f"ws://127.0.0.1:{server.url.rsplit(':', 1)[1]}/agent/{sandbox_id}?token="
        )

        status = await client.get(f"/sandbox/{sandbox_id}/status")
        assert status.status_code == 200
        body = status.json()
        assert set(body) == {"sandboxId", "connected", "createdAt"}
        assert body["sandboxId"] == sandbox_id
        assert body["connected"] is True
        assert ISO_MS.match(body["createdAt"])

        destroyed = await client.post(f"/sandbox/{sandbox_id}/destroy")
        assert destroyed.status_code == 200
        assert destroyed.json() == {"success": True, "sandboxId": sandbox_id}

        # an ended sandbox's status stays queryable (issue 4), in the seed's shape
        ended = await client.get(f"/sandbox/{sandbox_id}/status")
        assert ended.status_code == 200
        assert ended.json() == {**body, "connected": False}
        assert (await client.post(f"/sandbox/{sandbox_id}/destroy")).status_code == 404


async def test_seed_rpc_over_the_agent_url_alone(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        write = await call(
            ws,
            {"id": "1", "type": "write", "path": "hello.js", "content": "console.log('Hello!');"},
        )
        assert write == {"id": "1", "type": "writeResponse", "success": True, "path": "hello.js"}

        run = await call(ws, {"id": "2", "type": "exec", "cmd": "node", "args": ["hello.js"]})
        # protocol v1 adds fields (timedOut, signal, truncated, durationMs, pid) to these
        assert {k: run[k] for k in ("id", "type", "stdout", "stderr", "exitCode")} == {
            "id": "2",
            "type": "execResponse",
            "stdout": "Hello!\n",
            "stderr": "",
            "exitCode": 0,
        }

        read = await call(ws, {"id": "3", "type": "read", "path": "hello.js"})
        assert read == {
            "id": "3",
            "type": "readResponse",
            "content": "console.log('Hello!');",
            "path": "hello.js",
        }

        ls = await call(ws, {"id": "4", "type": "exec", "cmd": "ls", "args": ["-la"]})
        assert "hello.js" in ls["stdout"]
        assert ls["exitCode"] == 0


async def test_the_image_has_the_promised_tools(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for i, tool in enumerate(["python3", "node", "git", "curl", "sh", "bash"]):
            reply = await call(
                ws, {"id": i, "type": "exec", "cmd": "sh", "args": ["-c", f"command -v {tool}"]}
            )
            assert reply["exitCode"] == 0, tool


async def test_malformed_client_input_gets_errors_and_the_connection_survives(
    server: Server,
) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message("this is not json")
        assert (await receive(ws))["code"] == "BAD_REQUEST"
        await ws.send_message(b'{"id": 1, "type": "read", "path": 5}')
        bad = await receive(ws)
        assert (bad["id"], bad["type"], bad["code"]) == (1, "error", "BAD_REQUEST")
        assert (await call(ws, {"id": "u", "type": "warp"}))["code"] == "UNKNOWN_TYPE"
        assert (await call(ws, {"type": "exec", "cmd": "true"}))["id"] is None
        missing = await call(ws, {"id": "m", "type": "read", "path": "/nope/nothing"})
        assert (missing["id"], missing["code"]) == ("m", "NOT_FOUND")
        ok = await call(ws, {"id": "ok", "type": "exec", "cmd": "echo", "args": ["alive"]})
        assert ok["stdout"] == "alive\n"


async def test_many_concurrent_requests_on_one_connection(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for i in range(50):
            await ws.send_message(
                f'{{"id": {i}, "type": "exec", "cmd": "sh", "args": ["-c", "echo {i}"]}}'
            )
        replies = [await receive(ws) for _ in range(50)]
        assert sorted(r["id"] for r in replies) == list(range(50))
        failed = [r for r in replies if r.get("stdout") != f"{r['id']}\n"]
        assert failed == []


async def test_two_clients_with_the_same_ids_each_get_their_own_answer(server: Server) -> None:
    async with sandbox(server) as created:
        async with (
            websocket(created["agentUrl"]) as first,
            websocket(created["agentUrl"]) as second,
        ):
            results: dict[str, list[dict[str, object]]] = {}

            async def client(name: str, ws: WebSocketConnection) -> None:
                replies = []
                for i in range(10):
                    replies.append(
                        await call(
                            ws, {"id": i, "type": "exec", "cmd": "echo", "args": [f"{name}-{i}"]}
                        )
                    )
                results[name] = replies

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client, "a", first)
                nursery.start_soon(client, "b", second)
        for name in ("a", "b"):
            assert [r["id"] for r in results[name]] == list(range(10))
            assert [r["stdout"] for r in results[name]] == [f"{name}-{i}\n" for i in range(10)]


async def test_duplicate_id_in_flight_is_refused(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message('{"id": "same", "type": "exec", "cmd": "sleep", "args": ["1"]}')
        await ws.send_message('{"id": "same", "type": "exec", "cmd": "true"}')
        first = await receive(ws)
        assert (first["id"], first["code"]) == ("same", "BAD_REQUEST")
        second = await receive(ws)
        assert (second["id"], second["type"]) == ("same", "execResponse")


async def test_the_seeds_ws_port_serves_the_agent_url(docker_client: docker.DockerClient) -> None:
    """With the seed's `WS_PORT`, WebSockets are served on that port too and `agentUrl` names
    it; REST stays where it was."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ws_port = probe.getsockname()[1]
    process, server = start_server({"WS_PORT": str(ws_port)}, suffix="ws-port")
    try:
        async with sandbox(server) as created:
            assert created["agentUrl"].startswith(f"ws://127.0.0.1:{ws_port}/agent/")
            async with websocket(created["agentUrl"]) as ws:
                run = await call(ws, {"id": "1", "type": "exec", "cmd": "echo", "args": ["ok"]})
                assert run["stdout"] == "ok\n"
    finally:
        assert stop_server(process) == 0
