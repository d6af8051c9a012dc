"""An operator runs one template under gVisor (`runsc`) and the rest under runc (issue 5).

Needs `runsc` registered with dockerd: skipped where it is not, failed in CI (tests/tools.py),
where `.ci/run` installs and registers it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import docker
import pytest
import trio

from tests.conftest import IMAGE, Server, start_server, stop_server
from tests.e2e.helpers import call, containers_of, http, websocket
from tests.e2e.test_bulk_socket import BULK_ON
from tests.tools import missing

GVISOR_TEMPLATE = "insien-sandbox:gvisor-test"


@pytest.fixture(scope="module")
def gvisor_server(docker_client: docker.DockerClient) -> Iterator[Server]:
    runtimes = docker_client.info().get("Runtimes", {})
    if "runsc" not in runtimes:
        missing(
            "runsc (gVisor) registered with this dockerd",
            "apt-get install runsc, and register it with dockerd as .ci/run does",
        )
    repository, tag = GVISOR_TEMPLATE.split(":")
    docker_client.images.get(IMAGE).tag(repository, tag)
    settings = {GVISOR_TEMPLATE: {"runtime": "runsc"}}
    process, server = start_server(
        {"INSIEN_TEMPLATE_SETTINGS": json.dumps(settings), **BULK_ON}, suffix="gvisor"
    )
    try:
        yield server
    finally:
        code = stop_server(process)
        docker_client.images.remove(GVISOR_TEMPLATE)
        assert code == 0, server.log()[-4000:]


async def test_a_template_runs_under_gvisor_with_the_same_protections(
    gvisor_server: Server, docker_client: docker.DockerClient
) -> None:
    async with http(gvisor_server) as client:
        created = (
            (await client.post("/sandbox/create", json={"template": GVISOR_TEMPLATE}))
            .raise_for_status()
            .json()
        )
        plain = (await client.post("/sandbox/create")).raise_for_status().json()
        try:
            (container,) = containers_of(docker_client, created["sandboxId"])
            host = docker_client.api.inspect_container(container["Id"])["HostConfig"]
            assert host["Runtime"] == "runsc"
            assert host["NetworkMode"] == "none"
            (other,) = containers_of(docker_client, plain["sandboxId"])
            assert (
                docker_client.api.inspect_container(other["Id"])["HostConfig"]["Runtime"] == "runc"
            )

            async with websocket(created["agentUrl"]) as ws:
                kernel = await call(
                    ws,
                    {
                        "id": 1,
                        "type": "exec",
                        "cmd": "sh",
                        "args": ["-c", "dmesg | head -1; id -u"],
                    },
                )
                assert "gVisor" in kernel["stdout"], kernel
                assert kernel["stdout"].split()[-1] == "1000"
                # the per-thread identity of file requests works under gVisor too
                await call(
                    ws, {"id": 2, "type": "exec", "cmd": "ln", "args": ["-s", "/etc/shadow", "s"]}
                )
                denied = await call(ws, {"id": 3, "type": "read", "path": "s"})
                assert denied["code"] == "PERMISSION_DENIED"
                wrote = await call(ws, {"id": 4, "type": "write", "path": "f.txt", "content": "hi"})
                assert wrote["type"] == "writeResponse"
                # (Debian's gVisor of 2022 refuses coreutils' statx; Python's stat works)
                owner = await call(
                    ws,
                    {
                        "id": 5,
                        "type": "exec",
                        "cmd": "python3",
                        "args": ["-c", "import os; print(os.stat('f.txt').st_uid)"],
                    },
                )
                assert owner["stdout"] == "1000\n", (owner["stderr"], owner["exitCode"])
        finally:
            for sandbox in (created, plain):
                await client.post(f"/sandbox/{sandbox['sandboxId']}/destroy")


async def test_transfers_fall_back_to_stdio_under_gvisor(gvisor_server: Server) -> None:
    """gVisor keeps a sandbox's Unix sockets in its own kernel: the agent announces its bulk
    socket, the server cannot reach it from the host, and files go on stdio (issue 34)."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    async with http(gvisor_server) as client:
        created = (
            (await client.post("/sandbox/create", json={"template": GVISOR_TEMPLATE}))
            .raise_for_status()
            .json()
        )
        try:
            url = f"/sandbox/{created['sandboxId']}/files"
            put = await client.put(url, params={"path": "f.bin"}, content=data)
            assert put.json()["bytes"] == len(data), put.text
            assert (await client.get(url, params={"path": "f.bin"})).content == data
            tried = f"sandbox {created['sandboxId'][:8]}: no bulk socket"
            deadline = trio.current_time() + 10
            while tried not in gvisor_server.log():  # the server tried, and stayed on stdio
                assert trio.current_time() < deadline, gvisor_server.log()[-2000:]
                await trio.sleep(0.1)
        finally:
            await client.post(f"/sandbox/{created['sandboxId']}/destroy")
