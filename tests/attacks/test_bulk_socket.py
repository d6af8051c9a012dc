"""The bulk socket is root's (issue 34): user code in the sandbox can neither reach the agent's
bulk socket (to read or inject file content) nor put one of its own in its place (to receive
the server's connection), and the socket carries the sandbox's transfers throughout."""

from __future__ import annotations

import json

import docker
import trio

from tests.conftest import Server
from tests.e2e.helpers import call, containers_of, http, sandbox, websocket
from tests.e2e.test_bulk_socket import (  # server: the fixture with the bulk socket on
    SOCKET,
    bulk_sockets,
    server,  # noqa: F401
    until_attached,
)

ATTEMPTS = r"""
import json, os, socket
out = {}
def attempt(name, action):
    try:
        action()
        out[name] = "allowed"
    except OSError as exc:
        out[name] = type(exc).__name__
def connect():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect("/run/insien/bulk/agent.sock")
def listen_instead():
    os.unlink("/run/insien/bulk/agent.sock")
def bind_beside():
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("/run/insien/bulk/spoof.sock")
attempt("list", lambda: os.listdir("/run/insien/bulk"))
attempt("connect", connect)
attempt("replace", listen_instead)
attempt("bind", bind_beside)
attempt("chmod", lambda: os.chmod("/run/insien/bulk", 0o777))
attempt("rename", lambda: os.rename("/run/insien/bulk", "/tmp/bulk"))
print(json.dumps(out))
"""


async def test_user_code_cannot_reach_or_replace_the_bulk_socket(
    server: Server,  # noqa: F811 (the bulk socket's server, below)
    docker_client: docker.DockerClient,
) -> None:
    async with sandbox(server) as created:
        await until_attached(docker_client, created["sandboxId"])
        (container,) = containers_of(docker_client, created["sandboxId"])
        code, listing = docker_client.containers.get(container["Id"]).exec_run(
            ["stat", "-c", "%a %U %n", "/run/insien/bulk", SOCKET], user="0"
        )
        assert code == 0, listing
        assert isinstance(listing, bytes)
        assert listing.decode().split("\n")[:2] == [
            "700 root /run/insien/bulk",
            f"600 root {SOCKET}",
        ]
        async with websocket(created["agentUrl"]) as ws:
            ran = await call(
                ws, {"id": 1, "type": "exec", "cmd": "python3", "args": ["-c", ATTEMPTS]}
            )
            assert ran["exitCode"] == 0, ran
            results = json.loads(ran["stdout"])
            assert results.pop("rename") != "allowed"  # EBUSY (a mount point) or EACCES
            assert results == {
                "list": "PermissionError",
                "connect": "PermissionError",
                "replace": "PermissionError",
                "bind": "PermissionError",
                "chmod": "PermissionError",
            }
            # The file API runs as the user too: it cannot read or write there either.
            for request in (
                {"id": 2, "type": "list", "path": "/run/insien/bulk"},
                {"id": 3, "type": "write", "path": "/run/insien/bulk/x", "content": "x"},
            ):
                refused = await call(ws, request)
                assert refused["type"] == "error", refused
                assert refused["code"] == "PERMISSION_DENIED", refused
        # The socket still carries the transfers: nothing the user did took it over.
        async with http(server) as client:
            url = f"/sandbox/{created['sandboxId']}/files"
            data = b"\x00\xffbulk" * 100_000
            assert (await client.put(url, params={"path": "f"}, content=data)).status_code == 200
            assert (await client.get(url, params={"path": "f"})).content == data
        states = await trio.to_thread.run_sync(bulk_sockets, docker_client, created["sandboxId"])
        assert sorted(states) == ["01", "03"], states
