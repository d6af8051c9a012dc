"""The bulk socket (issue 34; docs/protocol.md, "The bulk socket"): file content and output
frames travel on a Unix socket beside the attach stream, a sandbox whose agent is started
again attaches the new one, a server SIGKILLed mid-transfer recovers, and with the socket
unavailable everything goes on stdio as before."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
import trio

from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, containers_of, http, kill_agent, sandbox, websocket
from tests.e2e.restartable import Restartable, restartable  # noqa: F401 (a fixture)
from tests.e2e.test_binary_channel import frames_until_final

MIB = 1024 * 1024
SOCKET = "/run/insien/bulk/agent.sock"


def bulk_sockets(client: docker.DockerClient, sandbox_id: str) -> list[str]:
    """The states (/proc/net/unix `St`: 01 listening, 03 connected) of the sockets the agent
    holds at the bulk socket's path, read from the host (the tests run as root there). A
    connection accepted from the host lives in the host's network namespace, so both tables
    are read, by the agent's socket inodes."""
    (container,) = containers_of(client, sandbox_id)
    inodes: set[str] = set()
    for row in client.api.top(container["Id"], ps_args="-o pid,comm")["Processes"]:
        if row[1] != "insien-agent":
            continue
        with contextlib.suppress(FileNotFoundError):  # a helper that just ended
            for fd in os.listdir(f"/proc/{row[0]}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    link = os.readlink(f"/proc/{row[0]}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[len("socket:[") : -1])
    pid = client.api.inspect_container(container["Id"])["State"]["Pid"]
    tables = []
    for table in (f"/proc/{pid}/net/unix", "/proc/net/unix"):
        with open(table) as lines:
            tables += lines.read().splitlines()[1:]
    return [
        fields[5]
        for fields in (line.split() for line in tables)
        if len(fields) > 7 and fields[7] == SOCKET and fields[6] in inodes
    ]


async def until_attached(client: docker.DockerClient, sandbox_id: str) -> None:
    """Until the agent holds a connected bulk socket (the server attaches it after hello)."""
    deadline = trio.current_time() + 15
    while "03" not in await trio.to_thread.run_sync(bulk_sockets, client, sandbox_id):
        assert trio.current_time() < deadline, "the bulk socket was never attached"
        await trio.sleep(0.1)


BULK_ON = {"INSIEN_BULK_SOCKET": "on"}
"""The bulk socket is opt-in (docs/protocol.md): these servers turn it on."""


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """This module's server, with the bulk socket on."""
    process, started = start_server(BULK_ON, suffix="bulk")
    yield started
    assert stop_server(process) == 0, started.log()[-3000:]


async def round_trip(server: Server, created: dict[str, Any], size: int) -> None:
    """An upload, its digest in the sandbox, the download, and a command's binary output."""
    data = os.urandom(size)
    async with http(server) as client:
        url = f"/sandbox/{created['sandboxId']}/files"
        put = await client.put(url, params={"path": "bulk.bin"}, content=data)
        assert put.json()["bytes"] == len(data), put.text
        got = await client.get(url, params={"path": "bulk.bin"})
        assert got.content == data
    async with websocket(created["agentUrl"]) as ws:
        digest = await call(ws, {"id": 1, "type": "exec", "cmd": "sha256sum", "args": ["bulk.bin"]})
        assert digest["stdout"].split()[0] == hashlib.sha256(data).hexdigest()
        # Output frames and the answer after them arrive in order, whichever path each took.
        script = "seq 1 300000; echo done >&2"
        request = {"id": "o", "type": "exec", "cmd": "sh", "args": ["-c", script]}
        await ws.send_message(json.dumps({**request, "stream": True, "binary": True}))
        frames, final = await frames_until_final(ws, "o")
        out = b"".join(data for head, data in frames if head["stream"] == "stdout")
        err = b"".join(data for head, data in frames if head["stream"] == "stderr")
        assert out == b"".join(b"%d\n" % i for i in range(1, 300001))
        assert (err, final["type"], final["exitCode"]) == (b"done\n", "execResponse", 0)


async def test_transfers_and_output_use_the_bulk_socket(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created:
        await until_attached(docker_client, created["sandboxId"])
        await round_trip(server, created, 24 * MIB + 12345)
        states = await trio.to_thread.run_sync(bulk_sockets, docker_client, created["sandboxId"])
        assert sorted(states) == ["01", "03"], states  # still the one connection


async def test_a_sandbox_booted_again_attaches_its_new_agent(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created, http(server) as client:
        sandbox_id = created["sandboxId"]
        await until_attached(docker_client, sandbox_id)
        # Paused without its memory, then connected: the container starts again with a new
        # agent, which finds the old agent's socket file in its directory.
        paused = await client.post(f"/e2b/sandboxes/{sandbox_id}/pause", json={"memory": False})
        assert paused.status_code == 204, paused.text
        again = await client.post(f"/e2b/sandboxes/{sandbox_id}/connect", json={"timeout": 60})
        assert again.status_code in (200, 201), again.text
        await until_attached(docker_client, sandbox_id)
        await round_trip(server, created, 6 * MIB)


def test_a_server_killed_mid_download_recovers_the_sandbox(
    restartable: Restartable,  # noqa: F811
    docker_client: docker.DockerClient,
) -> None:
    server = restartable.start(**BULK_ON)

    async def before() -> tuple[dict[str, Any], str]:
        async with http(server) as client:
            created: dict[str, Any] = (await client.post("/sandbox/create")).json()
            doomed: str = (await client.post("/sandbox/create")).json()["sandboxId"]
            await until_attached(docker_client, created["sandboxId"])
            async with websocket(created["agentUrl"]) as ws:
                made = await call(
                    ws,
                    {
                        "id": 1,
                        "type": "exec",
                        "cmd": "sh",
                        "args": ["-c", f"head -c {256 * MIB} /dev/zero > big.bin"],
                    },
                )
                assert made.get("exitCode") == 0, made
        # A raw GET, read until 8 MiB have come, then the SIGKILL: frames are in flight on
        # the bulk socket and reads are unanswered.
        parts = urlsplit(server.url)
        stream = await trio.open_tcp_stream(str(parts.hostname), int(parts.port or 80))
        async with stream:
            await stream.send_all(
                f"GET /sandbox/{created['sandboxId']}/files?path=big.bin HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\nX-API-Key: {server.api_key}\r\n\r\n".encode()
            )
            received = 0
            while received < 8 * MIB:
                piece = await stream.receive_some(MIB)
                assert piece, f"the download ended after {received} bytes"
                received += len(piece)
            restartable.kill()
        return created, doomed

    created, doomed = trio.run(before)
    trio.run(kill_agent, docker_client, doomed)  # it ends while no server runs
    started = time.monotonic()
    server = restartable.start(**BULK_ON)

    async def after() -> None:
        # The new server rejoins the agent (resume, on stdio), attaches a new bulk socket, and
        # everything works again: the agent let the dead connection go.
        await until_attached(docker_client, created["sandboxId"])
        states = await trio.to_thread.run_sync(bulk_sockets, docker_client, created["sandboxId"])
        assert sorted(states) == ["01", "03"], states
        await round_trip(server, created, 3 * MIB)
        async with http(server) as client:
            await client.post(f"/sandbox/{created['sandboxId']}/destroy")

    trio.run(after)
    assert time.monotonic() - started < 60
    # Both sandboxes' bulk directories went with them: the one destroyed, and the one the
    # restarted server found ended and removed without ever attaching to it.
    for sandbox_id in (created["sandboxId"], doomed):
        assert not os.path.exists(f"/run/insien-bulk/{sandbox_id}"), sandbox_id


@pytest.fixture(scope="module")
def stdio_server() -> Iterator[Server]:
    """A server that cannot make bulk directories (a path too long for a Unix socket): its
    sandboxes have no mount, so their agents announce no bulk socket."""
    process, server = start_server({"INSIEN_BULK_DIR": "/tmp/" + "x" * 100}, suffix="stdio")
    try:
        yield server
    finally:
        code = stop_server(process)
        assert code == 0, server.log()[-4000:]


async def test_without_the_mount_everything_goes_on_stdio(
    stdio_server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(stdio_server) as created:
        await round_trip(stdio_server, created, 6 * MIB)
        states = await trio.to_thread.run_sync(bulk_sockets, docker_client, created["sandboxId"])
        assert states == []  # no socket at all: the agent found no directory to listen in
