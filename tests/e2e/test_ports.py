"""Ports in, through the agent (issue 14, first part): a TCP connection to a port a program in
the sandbox listens on, as a WebSocket (`/sandbox/<id>/ports/<port>/tcp`), and the local
listeners built on it (`sandbox.ports.forward`, `insien sandbox forward`). The sandbox keeps
Docker's network `none` throughout."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws

from insien_sandbox import AsyncSandbox, Sandbox
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.anyio

ECHO = """
import socket, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 7000))
listener.listen(128)

def echo(connection):
    with connection:
        while data := connection.recv(65536):
            connection.sendall(data)

while True:
    connection, _ = listener.accept()
    threading.Thread(target=echo, args=(connection,), daemon=True).start()
"""


INSIEN = str(Path(sys.executable).parent / "insien")


def key(server: Server) -> dict[str, str]:
    return {"X-API-Key": server.api_key}


def connected(
    client: httpx.AsyncClient, url: str, server: Server
) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
    opening: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
        url, client, headers=key(server)
    )
    return opening


async def handshake(url: str, headers: dict[str, str]) -> httpx.Response:
    """The answer to a WebSocket handshake that is expected to be refused (its body read)."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with httpx.AsyncClient() as client:
        response = await client.get(url, headers={**upgrade, **headers})
    assert response.status_code != 101, "the handshake was accepted"
    return response


async def listening(box: AsyncSandbox, port: int) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    with anyio.fail_after(20):
        while (await box.commands.run("python3", ["-c", probe])).exit_code != 0:  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def test_a_web_server_in_the_sandbox_through_a_forward(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("site/hello.txt", "hi from inside")
        await box.commands.run("python3 -m http.server 8000", background=True, cwd="site")
        await listening(box, 8000)
        assert (await box.info()).state == "running"
        async with box.ports.forward(8000) as forward, httpx.AsyncClient() as client:
            listing = await client.get(f"{forward.url}/")
            assert listing.status_code == 200
            assert "hello.txt" in listing.text
            page = await client.get(f"{forward.url}/hello.txt")
            assert page.text == "hi from inside"


async def test_bytes_both_ways_over_many_connections(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("echo.py", ECHO)
        await box.commands.run("python3 echo.py", background=True)
        await listening(box, 7000)
        async with box.ports.forward(7000) as forward:
            received: dict[int, bytes] = {}
            sent = {n: os.urandom(512 * 1024 + n) for n in range(12)}
            big = os.urandom(24 * 1024 * 1024)

            async def one(n: int, payload: bytes) -> None:
                stream = await anyio.connect_tcp("127.0.0.1", forward.local_port)
                async with stream, anyio.create_task_group() as both:

                    async def write() -> None:
                        for start in range(0, len(payload), 65536):
                            await stream.send(payload[start : start + 65536])

                    both.start_soon(write)
                    got = bytearray()
                    while len(got) < len(payload):
                        got += await stream.receive()
                    received[n] = bytes(got)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tasks:
                    for n, payload in sent.items():
                        tasks.start_soon(one, n, payload)
                    tasks.start_soon(one, 99, big)
        assert received.pop(99) == big
        assert received == sent


async def test_a_closed_port_is_refused_at_once(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        sandbox_id = await box.create()
        url = f"{server.url}/sandbox/{sandbox_id}/ports/7999/tcp"
        with anyio.fail_after(10):
            refused = await handshake(url, key(server))
        assert refused.status_code == 502
        assert refused.json()["code"] == "CONNECTION_REFUSED"
        async with box.ports.forward(7999) as forward:  # the local end closes, no hang
            with anyio.fail_after(10):
                stream = await anyio.connect_tcp("127.0.0.1", forward.local_port)
                async with stream:
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()


async def test_a_port_needs_the_owners_key(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        sandbox_id = await box.create()
        base = f"{server.url}/sandbox"
        for url, headers, status in (
            (f"{base}/{sandbox_id}/ports/8000/tcp", {}, 401),
            (f"{base}/{sandbox_id}/ports/8000/tcp", {"X-API-Key": "wrong"}, 401),
            (f"{base}/no-such-sandbox/ports/8000/tcp", key(server), 404),
            (f"{base}/{sandbox_id}/ports/70000/tcp", key(server), 400),
        ):
            assert (await handshake(url, headers)).status_code == status, url


def test_forward_from_the_cli_and_the_blocking_sdk(server: Server) -> None:
    with Sandbox(api_key=server.api_key, base_url=server.url) as box:
        box.files.write("site/index.html", "<p>forwarded</p>")
        box.commands.run("python3 -m http.server 8000", background=True, cwd="site")
        anyio.run(listening_blocking, box)
        with box.ports.forward(8000) as forward:
            assert httpx.get(forward.url).text == "<p>forwarded</p>"
        env = {**os.environ, "INSIEN_URL": server.url, "INSIEN_API_KEY": server.api_key}
        with subprocess.Popen(
            [INSIEN, "sandbox", "forward", str(box.sandbox_id), "0:8000"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as cli:
            try:
                assert cli.stdout is not None
                line = cli.stdout.readline()
                assert line.startswith("forwarding http://127.0.0.1:"), line
                local = line.split()[1]
                assert httpx.get(local).text == "<p>forwarded</p>"
                cli.send_signal(signal.SIGINT)
                assert cli.wait(timeout=20) == 0
            finally:
                if cli.poll() is None:
                    cli.kill()


async def listening_blocking(box: Sandbox) -> None:
    probe = "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=1)"
    for _ in range(200):
        if (
            await anyio.to_thread.run_sync(box.commands.run, "python3", ["-c", probe])
        ).exit_code == 0:
            return
        await anyio.sleep(0.1)
    raise AssertionError("the web server never listened")


async def test_connections_into_one_sandbox_are_limited() -> None:
    process, server = start_server({"INSIEN_MAX_TUNNELS": "2"}, suffix="tunnels")
    try:
        async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
            await box.files.write("echo.py", ECHO)
            await box.commands.run("python3 echo.py", background=True)
            await listening(box, 7000)
            url = f"{server.url}/sandbox/{box.sandbox_id}/ports/7000/tcp"
            async with (
                httpx.AsyncClient() as client,
                connected(client, url, server) as first,
                connected(client, url, server) as second,
            ):
                await first.send_bytes(b"one")
                await second.send_bytes(b"two")
                assert await first.receive_bytes() == b"one"
                assert await second.receive_bytes() == b"two"
                assert (await handshake(url, key(server))).status_code == 429
            with anyio.fail_after(10):
                while True:  # the two closed: a third opens again
                    async with httpx.AsyncClient() as client:
                        try:
                            async with connected(client, url, server) as third:
                                await third.send_bytes(b"three")
                                assert await third.receive_bytes() == b"three"
                                break
                        except WebSocketUpgradeError:
                            await anyio.sleep(0.1)
    finally:
        assert stop_server(process) == 0
