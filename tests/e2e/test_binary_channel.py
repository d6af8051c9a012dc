"""The binary channel end to end (issue 11): bulk bytes as raw frames from the agent to a
WebSocket client's binary messages, JSON for clients that do not ask, back-pressure with a
client that stops reading, and transfers cut halfway leaving nothing presented as complete."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import docker
import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from insien_sandbox import AsyncSandbox
from tests.conftest import Server, rss_bytes
from tests.e2e.helpers import call, http, sandbox, websocket
from tests.e2e.restartable import Restartable, restartable  # noqa: F401 (a fixture)

MIB = 1024 * 1024


async def frames_until_final(
    ws: WebSocketConnection, request_id: Any
) -> tuple[list[tuple[dict[str, Any], bytes]], dict[str, Any]]:
    """Binary messages (their description and bytes) for a request, then its final answer."""
    got: list[tuple[dict[str, Any], bytes]] = []
    with trio.fail_after(60):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                head, newline, data = message.partition(b"\n")
                assert newline, message[:100]
                got.append((json.loads(head), data))
                continue
            decoded: dict[str, Any] = json.loads(message)
            if decoded.get("id") == request_id and decoded["type"] not in ("output", "data"):
                return got, decoded
            assert decoded["type"] in ("output", "spawnResponse"), decoded


async def test_output_comes_as_raw_binary_messages_only_when_asked(server: Server) -> None:
    script = r"printf 'a\377\000b'; printf 'err' >&2"
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        request = {"type": "exec", "cmd": "/bin/sh", "args": ["-c", script], "stream": True}
        await ws.send_message(json.dumps({**request, "id": "b", "binary": True}))
        frames, final = await frames_until_final(ws, "b")
        by_stream: dict[str, bytes] = {}
        for head, data in frames:
            assert head["id"] == "b"
            assert head["type"] == "output"
            by_stream[head["stream"]] = by_stream.get(head["stream"], b"") + data
        assert by_stream == {"stdout": b"a\xff\x00b", "stderr": b"err"}
        assert final["type"] == "execResponse"
        assert final["exitCode"] == 0

        # The same request without `binary`: JSON events, as every JSON-only client gets.
        await ws.send_message(json.dumps({**request, "id": "j", "encoding": "base64"}))
        events = []
        with trio.fail_after(30):
            while True:
                message = await ws.get_message()
                assert isinstance(message, str), "a JSON client got a binary message"
                decoded = json.loads(message)
                if decoded["type"] != "output":
                    break
                events.append(decoded)
        assert {e["stream"] for e in events} == {"stdout", "stderr"}
        assert all(isinstance(e["data"], str) for e in events)


async def test_a_file_read_comes_as_one_binary_message_before_its_answer(server: Server) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB, every byte value
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        async with http(server) as client:
            (
                await client.put(
                    f"/sandbox/{created['sandboxId']}/files",
                    params={"path": "all.bin"},
                    content=content,
                )
            ).raise_for_status()
        await ws.send_message(
            json.dumps({"id": 1, "type": "read", "path": "all.bin", "binary": True})
        )
        frames, final = await frames_until_final(ws, 1)
        assert [head["type"] for head, _ in frames] == ["data"]
        assert b"".join(data for _, data in frames) == content
        assert final["type"] == "readResponse"
        assert final["bytes"] == len(content)
        assert "content" not in final

        refused = await call(ws, {"id": 2, "type": "read", "path": "all.bin", "channel": 7})
        assert refused["code"] == "BAD_REQUEST"
        assert "channel" in refused["message"]


async def test_a_client_that_stops_reading_slows_the_command_and_loses_nothing(
    server: Server,
) -> None:
    size = 96 * MIB
    async with (
        sandbox(server) as created,
        open_websocket_url(
            created["agentUrl"], max_message_size=4 * MIB, message_queue_size=1
        ) as ws,
    ):
        before = rss_bytes(server.pid)
        command = f"head -c {size} /dev/zero | tr '\\0' x"
        request = {"id": 1, "type": "spawn", "cmd": "/bin/sh", "args": ["-c", command]}
        await ws.send_message(json.dumps({**request, "binary": True}))
        peak = before
        for _ in range(12):  # nobody reads for three seconds
            await trio.sleep(0.25)
            peak = max(peak, rss_bytes(server.pid))
        assert peak - before < 64 * MIB, f"grew {(peak - before) / MIB:.0f} MiB"
        received = 0
        with trio.fail_after(120):
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    received += len(message.partition(b"\n")[2])
                    continue
                decoded = json.loads(message)
                assert "dropped" not in decoded, decoded
                if decoded["type"] == "exit":
                    break
        assert received == size
        assert decoded["exitCode"] == 0


async def test_the_sdk_decodes_text_split_across_frames(server: Server) -> None:
    # 2-byte characters over several 256 KiB chunks: some chunks end mid-character.
    count = 400_000
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        pieces: list[str] = []
        result = await box.commands.run(
            f"python3 -c \"import sys; sys.stdout.write('é' * {count})\"",
            on_stdout=pieces.append,
        )
        assert result.exit_code == 0
        assert "".join(pieces) == "é" * count
        handle = await box.commands.run(
            f"python3 -c \"import sys; sys.stdout.write('ü' * {count})\"", background=True
        )
        done = await handle.wait()
        assert done.stdout == "ü" * count
        terminal = await box.pty.create(cmd="/bin/sh", args=["-c", "printf '\\377ok'"])
        chunks = [chunk.data async for chunk in terminal]
        assert b"".join(c for c in chunks if isinstance(c, bytes)).endswith(b"\xffok")


def _cut_upload(url: str, sandbox_id: str, api_key: str, sent: int, declared: int) -> None:
    """Send the start of a PUT body over a raw socket, then vanish without finishing."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as raw:
        raw.sendall(
            f"PUT /sandbox/{sandbox_id}/files?path=cut.bin HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nX-API-Key: {api_key}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
        )
        raw.sendall(b"\x01" * sent)


async def names_in_home(created: dict[str, Any]) -> list[str]:
    async with websocket(created["agentUrl"]) as ws:
        reply = await call(ws, {"id": 1, "type": "list", "path": "."})
    return sorted(entry["name"] for entry in reply["entries"])


async def test_an_upload_cut_by_its_client_leaves_no_file(server: Server) -> None:
    async with sandbox(server) as created:
        await trio.to_thread.run_sync(
            _cut_upload, server.url, created["sandboxId"], server.api_key, 5 * MIB, 20 * MIB
        )
        names = await names_in_home(created)
        with trio.fail_after(20):
            while any("cut.bin" in name for name in names):  # the temporary file goes too
                assert "cut.bin" not in names, names
                await trio.sleep(0.2)
                names = await names_in_home(created)


async def test_a_download_cut_by_a_destroy_is_an_error_not_a_short_file(server: Server) -> None:
    async with sandbox(server) as created, http(server) as client:
        sandbox_id = created["sandboxId"]
        (
            await client.put(
                f"/sandbox/{sandbox_id}/files",
                params={"path": "big.bin"},
                content=b"\x02" * (64 * MIB),
            )
        ).raise_for_status()
        received = 0
        failed = False
        try:
            async with client.stream(
                "GET", f"/sandbox/{sandbox_id}/files", params={"path": "big.bin"}
            ) as response:
                assert response.headers["X-Insien-File-Size"] == str(64 * MIB)
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= 2 * MIB and not failed:
                        failed = True
                        async with http(server) as other:
                            await other.post(f"/sandbox/{sandbox_id}/destroy")
        except httpx.RemoteProtocolError:
            pass
        else:
            raise AssertionError(f"the body ended cleanly after {received} bytes")
        assert received < 64 * MIB


def test_a_server_killed_mid_upload_leaves_no_file_under_the_real_name(
    restartable: Restartable,  # noqa: F811
    docker_client: docker.DockerClient,
) -> None:
    server = restartable.start()

    created = httpx.post(f"{server.url}/sandbox/create", headers=server.headers).json()
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as raw:
        raw.sendall(
            f"PUT /sandbox/{created['sandboxId']}/files?path=killed.bin HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nX-API-Key: {server.api_key}\r\n"
            f"Content-Length: {512 * MIB}\r\n\r\n".encode()
        )

        def keep_sending() -> None:
            # The body keeps coming until the kill, so the server dies while writing frames
            # to the agent: mostly in the middle of one, which the next server must get past.
            with contextlib.suppress(OSError):
                for _ in range(512):
                    raw.sendall(b"\x03" * MIB)

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while not any(  # until chunks reach the sandbox's temporary file
            name.startswith("killed.bin.insien-upload-")
            for name in trio.run(names_in_home, created)
        ):
            assert time.monotonic() < deadline, "the upload never reached the sandbox"
            time.sleep(0.1)
        restartable.kill()  # SIGKILL while the body is still coming
        raw.close()
        sender.join(10)
    server = restartable.start()

    async def check() -> None:
        # The sandbox came back: the new server got past whatever frame was cut off.
        async with websocket(created["agentUrl"]) as ws:
            ran = await call(ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["back"]})
        assert ran["stdout"] == "back\n", ran
        names = await names_in_home(created)
        assert "killed.bin" not in names, names
        # What had arrived is under the temporary name, never the real one.
        assert any(name.startswith("killed.bin.insien-upload-") for name in names), names
        async with http(server) as client:
            await client.post(f"/sandbox/{created['sandboxId']}/destroy")

    trio.run(check)
