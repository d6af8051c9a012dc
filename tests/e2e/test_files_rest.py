"""Large files over REST, streamed both ways with bounded memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import trio

from tests.conftest import Server, rss_bytes, start_server, stop_server
from tests.e2e.helpers import call, http, sandbox, websocket

MIB = 1024 * 1024


async def test_upload_and_download_round_trip(server: Server) -> None:
    data = os.urandom(20 * MIB + 12345)
    async with sandbox(server) as created, http(server) as client:
        url = f"/sandbox/{created['sandboxId']}/files"
        put = await client.put(url, params={"path": "up/data.bin"}, content=data)
        assert put.status_code == 200
        assert put.json() == {"success": True, "path": "up/data.bin", "bytes": len(data)}
        async with websocket(created["agentUrl"]) as ws:
            digest = await call(
                ws, {"id": 1, "type": "exec", "cmd": "sha256sum", "args": ["up/data.bin"]}
            )
            assert digest["stdout"].split()[0] == hashlib.sha256(data).hexdigest()
            listing = await call(ws, {"id": 2, "type": "list", "path": "up"})
            assert [e["name"] for e in listing["entries"]] == ["data.bin"]  # no temporary left
        got = await client.get(url, params={"path": "up/data.bin"})
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.content == data
        empty = await client.put(url, params={"path": "empty"}, content=b"")
        assert empty.json()["bytes"] == 0
        assert (await client.get(url, params={"path": "empty"})).content == b""


async def test_streamed_upload_keeps_server_memory_flat(server: Server) -> None:
    size = 96 * MIB

    async def body() -> AsyncIterator[bytes]:
        chunk = b"\xab" * MIB
        for _ in range(size // MIB):
            yield chunk

    async with sandbox(server) as created, http(server) as client:
        url = f"/sandbox/{created['sandboxId']}/files"
        baseline = rss_bytes(server.pid)
        peak = baseline

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(server.pid))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            put = await client.put(url, params={"path": "big.bin"}, content=body())
            nursery.cancel_scope.cancel()
        assert put.json()["bytes"] == size
        assert peak - baseline < 48 * MIB, f"server grew by {(peak - baseline) / MIB:.1f} MiB"
        total = 0
        async with client.stream("GET", url, params={"path": "big.bin"}) as response:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
        assert total == size


async def test_transfer_errors(server: Server) -> None:
    async with sandbox(server) as created, http(server) as client:
        url = f"/sandbox/{created['sandboxId']}/files"
        assert (await client.get(url, params={"path": "missing"})).status_code == 404
        assert (await client.get(url, params={"path": "/tmp"})).json()["code"] == "IS_A_DIRECTORY"
        assert (await client.get(url, params={"path": "/dev/zero"})).status_code == 400
        assert (await client.get(url)).status_code == 400
        assert (await client.put(url, content=b"x")).status_code == 400
        async with http(server, key="wrong") as intruder:
            assert (await intruder.put(url, params={"path": "x"}, content=b"x")).status_code == 401
            assert (await intruder.get(url, params={"path": "x"})).status_code == 401
        gone = "/sandbox/00000000-0000-0000-0000-000000000000/files"
        assert (await client.put(gone, params={"path": "x"}, content=b"x")).status_code == 404


def test_upload_over_the_limit_is_refused_and_leaves_nothing(docker_client: object) -> None:
    process, info = start_server({"INSIEN_MAX_UPLOAD_BYTES": str(2 * MIB)}, suffix="limits")

    async def scenario() -> None:
        async with sandbox(info) as created, http(info) as client:
            url = f"/sandbox/{created['sandboxId']}/files"
            # Refused on the declared size alone, before the client sends any of the body.
            host, port = info.url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(
                    f"PUT {url}?path=a HTTP/1.1\r\nHost: x\r\nX-API-Key: {info.api_key}\r\n"
                    f"Content-Length: {3 * MIB}\r\n\r\n".encode()
                )
                with trio.fail_after(10):
                    answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 413")
            assert b"connection: close" in answer.lower()

            async def unsized() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"y" * MIB

            streamed = await client.put(url, params={"path": "b"}, content=unsized())
            assert streamed.status_code == 413
            assert streamed.json()["code"] == "TOO_LARGE"
            async with websocket(created["agentUrl"]) as ws:
                listing = await call(ws, {"id": 1, "type": "list", "path": "."})
                assert [
                    e["name"] for e in listing["entries"] if not e["name"].startswith(".")
                ] == []

    try:
        trio.run(scenario)
    finally:
        assert stop_server(process) == 0
