"""Everything a container writes is hostile input (issue 18, V3): an agent that writes nesting
bombs, invalid UTF-8, non-objects, over-long lines or half a line ends its own sandbox, never
the server, a neighbour or a restart. The hostile agent is a template whose interpreter runs
`hostile_agent.py` instead of Insien's agent."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.conftest import IMAGE, Server, start_server, stop_server
from tests.e2e.helpers import call, containers_of, http, websocket
from tests.e2e.restartable import Restartable
from tests.e2e.test_recovery import sandbox_info

HOSTILE_IMAGE = "insien-hostile-agent:test"
HOSTILE_PYTHON = "/opt/hostile/python3"
HOSTILE_SETTINGS = {
    "INSIEN_TEMPLATE_SETTINGS": json.dumps({HOSTILE_IMAGE: {"python": HOSTILE_PYTHON}}),
}
PROTOCOL_BREAKS = [
    "bomb",
    "object-bomb",
    "bad-utf8",
    "not-an-object",
    "not-json",
    "nul-bytes",
    "huge-line",
]


def _context() -> bytes:
    dockerfile = (
        f"FROM {IMAGE}\n"
        "COPY hostile_agent.py /opt/hostile/agent.py\n"
        "COPY python3 /opt/hostile/python3\n"
        "RUN chmod 755 /opt/hostile/python3\n"
    )
    files = {
        "Dockerfile": dockerfile.encode(),
        "hostile_agent.py": (Path(__file__).parent / "hostile_agent.py").read_bytes(),
        # Whatever arguments the server passes, run the impostor.
        "python3": b"#!/bin/sh\nexec /usr/bin/python3 -I /opt/hostile/agent.py\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile_image(docker_client: docker.DockerClient) -> str:
    docker_client.images.build(
        fileobj=io.BytesIO(_context()), custom_context=True, tag=HOSTILE_IMAGE, rm=True
    )
    return HOSTILE_IMAGE


@pytest.fixture(scope="module")
def hostile_server(hostile_image: str) -> Iterator[Server]:
    process, server = start_server(HOSTILE_SETTINGS, suffix="hostile")
    yield server
    assert stop_server(process) == 0, server.log()[-3000:]


async def create(server: Server, template: str | None = None) -> dict[str, Any]:
    async with http(server) as client:
        body = {"template": template} if template else {}
        response = await client.post("/sandbox/create", json=body)
        assert response.status_code == 200, response.text
        created: dict[str, Any] = response.json()
        return created


async def ended_with(server: Server, sandbox_id: str, timeout: float = 15) -> str:
    with trio.fail_after(timeout):
        while (found := await sandbox_info(server, sandbox_id))["state"] != "ended":  # noqa: ASYNC110
            await trio.sleep(0.1)
    return str(found["endReason"])


async def until_closed(ws: WebSocketConnection) -> ConnectionClosed:
    """Read until the server closes the connection; every message before must be an end."""
    with trio.fail_after(20):
        while True:
            try:
                reply = json.loads(await ws.get_message())
            except ConnectionClosed as closed:
                return closed
            assert reply["type"] in ("error", "sandboxEnded"), reply


async def exec_ok(server: Server, created: dict[str, Any]) -> None:
    async with websocket(created["agentUrl"]) as ws:
        reply = await call(ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["alive"]})
        assert reply.get("stdout") in ("alive\n", "ok\n"), reply


@pytest.mark.parametrize("kind", PROTOCOL_BREAKS)
async def test_a_protocol_break_ends_only_its_own_sandbox(
    hostile_server: Server, hostile_image: str, kind: str
) -> None:
    neighbour = await create(hostile_server)
    hostile = await create(hostile_server, hostile_image)
    await exec_ok(hostile_server, hostile)  # it passes for an agent until it is asked
    async with websocket(hostile["agentUrl"]) as ws:
        await ws.send_message(json.dumps({"id": 7, "type": "exec", "cmd": kind}))
        seen = (await until_closed(ws)).reason
        assert seen is not None
        assert seen.code == 1001
        assert "agent protocol error" in str(seen.reason)
    assert await ended_with(hostile_server, hostile["sandboxId"]) == "agent_protocol_error"
    # the server and the neighbour carry on
    await exec_ok(hostile_server, neighbour)
    async with http(hostile_server) as client:
        assert (await client.get("/health")).status_code == 200
        await client.post(f"/sandbox/{neighbour['sandboxId']}/destroy")
    assert "agent protocol error" in hostile_server.log()


async def test_half_a_line_then_exit_reads_as_an_agent_that_exited(
    hostile_server: Server, hostile_image: str
) -> None:
    hostile = await create(hostile_server, hostile_image)
    async with websocket(hostile["agentUrl"]) as ws:
        await ws.send_message(json.dumps({"id": 1, "type": "exec", "cmd": "half-line"}))
        await until_closed(ws)
    assert await ended_with(hostile_server, hostile["sandboxId"]) == "agent_exited"


async def test_unknown_ids_and_floods_are_dropped_and_the_sandbox_serves_on(
    hostile_server: Server, hostile_image: str
) -> None:
    hostile = await create(hostile_server, hostile_image)
    async with websocket(hostile["agentUrl"]) as ws:
        reply = await call(ws, {"id": 1, "type": "exec", "cmd": "flood"}, timeout=60)
        assert reply["stdout"] == "after the flood\n"
        assert (await call(ws, {"id": 2, "type": "exec", "cmd": "ok"}))["stdout"] == "ok\n"
    assert (await sandbox_info(hostile_server, hostile["sandboxId"]))["state"] == "running"


def test_a_hostile_container_during_recovery_is_ended_and_the_rest_recover(
    hostile_image: str, docker_client: docker.DockerClient
) -> None:
    restartable = Restartable("hostile-restart")
    server = restartable.start(**HOSTILE_SETTINGS)
    try:

        async def before() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            good = [await create(server) for _ in range(2)]
            hostile = await create(server, hostile_image)
            for created in [*good, hostile]:
                await exec_ok(server, created)
            return good, hostile

        good, hostile = trio.run(before)
        # From now on the impostor answers a restarted server's resume with a nesting bomb.
        (container,) = docker_client.containers.list(
            filters={"label": f"insien.sandbox.id={hostile['sandboxId']}"}
        )
        assert container.exec_run(["touch", "/tmp/hostile-resume"]).exit_code == 0
        assert restartable.stop() == 0
        server = restartable.start(**HOSTILE_SETTINGS)

        async def after() -> None:
            for created in good:
                await exec_ok(server, created)
            assert await ended_with(server, hostile["sandboxId"]) == "agent_protocol_error"

        trio.run(after)
        assert "2 recovered" in server.log(), server.log()
        assert "1 refused" in server.log(), server.log()
        # Its container goes right after it ended (removal runs after the end is recorded).
        for _ in range(100):
            if not containers_of(docker_client, hostile["sandboxId"]):
                break
            time.sleep(0.1)
        assert not containers_of(docker_client, hostile["sandboxId"])
        assert restartable.stop() == 0
    finally:
        if restartable.process is not None and restartable.process.poll() is None:
            restartable.kill()
        restartable.start(INSIEN_SHUTDOWN_ENDS_SANDBOXES="true", **HOSTILE_SETTINGS)
        assert restartable.stop() == 0
