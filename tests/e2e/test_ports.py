"""Ports in, through the agent (issue 14, first part): a TCP connection to a port a program in
the sandbox listens on, as a WebSocket (`/sandbox/<id>/ports/<port>/tcp`), and the local
listeners built on it (`sandbox.ports.forward`, `insien sandbox forward`). The sandbox keeps
Docker's network `none` throughout."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws

from insien_sandbox import AsyncSandbox, Sandbox
from tests.conftest import Server, rss_bytes, start_server, stop_server
from tests.sandbox_apps import BULK, WS_ECHO

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


PORT_MESSAGE = 1024 * 1024
"""What a client here takes in one message: a port's bytes come as read (up to 512 KiB), and
httpx-ws 0.10 refuses more than its limit (64 KiB by default) with 1009."""


def key(server: Server) -> dict[str, str]:
    return {"X-API-Key": server.api_key}


def connected(
    client: httpx.AsyncClient, url: str, server: Server
) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
    opening: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
        url, client, headers=key(server), max_message_size_bytes=PORT_MESSAGE
    )
    return opening


def ws_to(
    url: str,
    client: httpx.AsyncClient,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
    opening: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
        url,
        client,
        headers=headers or {},
        subprotocols=subprotocols,
        max_message_size_bytes=PORT_MESSAGE,
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
            sent = {n: os.urandom(64 * 1024 + n) for n in range(100)}  # 100 at once
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
                    tasks.start_soon(one, -1, big)
        assert received.pop(-1) == big
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


APP = """
import hashlib, http.server, json

BIG = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB

class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, body, kind="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/big":
            return self.answer(BIG, "application/octet-stream")
        seen = {"path": self.path, "prefix": self.headers.get("X-Forwarded-Prefix"),
                "cookie": self.headers.get("Cookie"), "key": self.headers.get("X-API-Key")}
        self.answer(json.dumps(seen).encode())

    def do_POST(self):
        size = int(self.headers.get("Content-Length") or 0)
        digest, left = hashlib.sha256(), size
        while left:
            chunk = self.rfile.read(min(left, 65536))
            digest.update(chunk)
            left -= len(chunk)
        self.answer(json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode())

http.server.ThreadingHTTPServer(("127.0.0.1", 8080), App).serve_forever()
"""


async def test_http_to_a_port_by_path(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("app.py", APP)
        await box.commands.run("python3 app.py", background=True)
        await listening(box, 8080)
        base = f"{server.url}/sandbox/{box.sandbox_id}/ports/8080"
        async with httpx.AsyncClient(headers=key(server), timeout=60) as client:
            page = await client.get(f"{base}/deep/page?a=1&b=two", headers={"Cookie": "x=y"})
            seen = page.json()
            assert seen == {
                "path": "/deep/page?a=1&b=two",
                "prefix": f"/sandbox/{box.sandbox_id}/ports/8080",
                "cookie": "x=y",
                "key": None,  # the key is Insien's, never the app's
            }
            big = await client.get(f"{base}/big")
            assert big.content == bytes(range(256)) * (8 * 1024 * 4)
            body = os.urandom(10 * 1024 * 1024)
            posted = (await client.post(f"{base}/upload", content=body)).json()
            assert posted == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            closed = await client.get(f"{server.url}/sandbox/{box.sandbox_id}/ports/8081/")
            assert closed.status_code == 502
            assert closed.json()["code"] == "CONNECTION_REFUSED"
        async with httpx.AsyncClient() as anonymous:
            assert (await anonymous.get(f"{base}/")).status_code == 401


async def test_a_preview_url_works_without_a_key_and_keeps_a_cookie(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("app.py", APP)
        await box.commands.run("python3 app.py", background=True)
        await listening(box, 8080)
        url = await box.ports.url(8080, expires=60)
        assert "insien_token=" in url
        async with httpx.AsyncClient() as browser:  # no key: only what the URL gives
            first = await browser.get(url)
            assert first.status_code == 200
            assert first.json()["path"] == "/"  # the token is not passed on
            assert "insien_port" in first.headers["set-cookie"]
            followed = await browser.get(url.split("?")[0] + "next?x=1")  # the cookie alone
            assert followed.json() == {**followed.json(), "path": "/next?x=1", "cookie": None}
            other_port = url.replace("/ports/8080/", "/ports/8081/")
            assert (await browser.get(other_port)).status_code == 401
        short = await box.ports.url(8080, expires=1)
        await anyio.sleep(2.5)
        async with httpx.AsyncClient() as late:
            assert (await late.get(short)).status_code == 401


FLOOD = """
import socket
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 7100))
listener.listen(8)
block = b"x" * 65536
while True:
    connection, _ = listener.accept()
    try:
        while True:
            connection.sendall(block)
    except OSError:
        connection.close()
"""


async def test_a_client_that_never_reads_does_not_grow_the_server(server: Server) -> None:
    """A program writing without end into a tunnel whose client reads nothing: the agent stops
    reading the socket once its credit is spent, so nothing piles up in the server."""
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("flood.py", FLOOD)
        await box.commands.run("python3 flood.py", background=True)
        await listening(box, 7100)
        url = f"{server.url}/sandbox/{box.sandbox_id}/ports/7100/tcp"
        before = rss_bytes(server.pid)
        async with httpx.AsyncClient() as client, connected(client, url, server) as stalled:
            assert len(await stalled.receive_bytes()) > 0  # bytes flow, then nobody reads
            await anyio.sleep(4)
            grown = rss_bytes(server.pid) - before
            assert grown < 48 * 1024 * 1024, f"the server grew by {grown} bytes"
        # and the sandbox serves on
        assert (await box.commands.run("echo fine")).stdout == "fine\n"


MIB = 1024 * 1024


async def test_a_hundred_mib_each_way_through_a_port(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.files.write("bulk.py", BULK)
        await box.commands.run("python3 bulk.py 8300", background=True)
        await listening(box, 8300)
        base = f"{server.url}/sandbox/{box.sandbox_id}/ports/8300"
        size = 100 * MIB
        sent = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(size // MIB):
                chunk = os.urandom(MIB)
                sent.update(chunk)
                yield chunk

        headers = {**key(server), "Content-Length": str(size)}
        async with httpx.AsyncClient(timeout=120) as client:
            up = await client.post(f"{base}/", content=body(), headers=headers)
            assert up.text == sent.hexdigest()
            got, length = hashlib.sha256(), 0
            async with client.stream("GET", f"{base}/{size}", headers=key(server)) as down:
                async for chunk in down.aiter_bytes():
                    got.update(chunk)
                    length += len(chunk)
        block = bytes(range(256)) * 4096
        assert length == size
        assert got.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()


async def test_websockets_in_every_form() -> None:
    """A WebSocket server in the sandbox, reached by path, by host, by E2B's headers, through
    a preview token, publicly, and over a TCP forward; refusals before the upgrade are HTTP."""
    domain = "sandboxes.test"
    process, server = start_server({"INSIEN_DOMAIN": domain, "INSIEN_POOL_SIZE": "0"}, "ws")
    try:
        async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
            await box.files.write("ws.py", WS_ECHO)
            await box.commands.run("python3 ws.py 8500", background=True)
            await listening(box, 8500)
            sid = box.sandbox_id
            path_url = server.url.replace("http", "ws", 1) + f"/sandbox/{sid}/ports/8500"
            host_url = server.url.replace("http", "ws", 1) + "/chat"
            e2b_url = server.url.replace("http", "ws", 1) + "/e2b/chat"
            async with httpx.AsyncClient() as client:

                async def echo(url: str, headers: dict[str, str], expect_path: str) -> None:
                    async with ws_to(url, client, headers, ["chat.v1"]) as ws:
                        assert ws.subprotocol == "chat.v1"
                        await ws.send_text("hello")
                        assert await ws.receive_text() == "hello"
                        await ws.send_bytes(b"\x00\xff" * 40000)  # a 16-bit length frame
                        assert await ws.receive_bytes() == b"\x00\xff" * 40000
                        await ws.send_text("path?")
                        assert await ws.receive_text() == expect_path

                await echo(f"{path_url}/chat?x=1", key(server), "/chat?x=1")
                # a server that speaks first, its greeting in the same packet as its 101
                async with ws_to(f"{path_url}/greet", client, key(server)) as ws:
                    assert await ws.receive_text(timeout=30) == "welcome"
                host = {"Host": f"8500-{sid}.{domain}", **key(server)}
                await echo(host_url, host, "/chat")
                e2b = {"E2b-Sandbox-Id": str(sid), "E2b-Sandbox-Port": "8500", **key(server)}
                await echo(e2b_url, e2b, "/chat")
                token = (await box.ports.url(8500, expires=60)).split("insien_token=")[1]
                await echo(f"{path_url}/t?insien_token={token}", {}, "/t")

                # refused before the upgrade: no key (a client without the cookie), a closed port
                async with httpx.AsyncClient() as stranger:
                    with pytest.raises(WebSocketUpgradeError) as refused:
                        async with aconnect_ws(f"{path_url}/chat", stranger):
                            pass
                assert refused.value.response.status_code == 401
                closed = path_url.replace("/ports/8500", "/ports/8599")
                with pytest.raises(WebSocketUpgradeError) as refused:
                    async with aconnect_ws(closed, client, headers=key(server)):
                        pass
                assert refused.value.response.status_code == 502

                # public ports: no key at all
                policy = {"allowPublicTraffic": True}
                update = await client.put(
                    f"{server.url}/sandbox/{sid}/network", json=policy, headers=key(server)
                )
                assert update.status_code == 200
                await echo(f"{path_url}/open", {}, "/open")
                await echo(host_url, {"Host": f"8500-{sid}.{domain}"}, "/chat")

            # and as plain TCP: a forward carries the upgrade like any other bytes
            async with box.ports.forward(8500) as forward, httpx.AsyncClient() as local:
                url = forward.url.replace("http", "ws", 1) + "/fwd"
                async with ws_to(url, local) as ws:
                    await ws.send_text("path?")
                    assert await ws.receive_text() == "/fwd"
    finally:
        assert stop_server(process) == 0
