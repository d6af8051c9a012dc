"""Containers as Docker sees them: labelled, hardened, removed on destroy and on shutdown."""

from __future__ import annotations

import json
import re
import time

import docker
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import (
    call,
    containers_of,
    http,
    kill_agent,
    receive,
    sandbox,
    until_running,
    websocket,
)


async def test_container_is_labelled_and_configured(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created:
        (summary,) = containers_of(docker_client, created["sandboxId"])
        info = docker_client.api.inspect_container(summary["Id"])
        labels = info["Config"]["Labels"]
        assert labels["insien.sandbox.id"] == created["sandboxId"]
        assert labels["insien.owner"] == "default"
        assert labels["insien.instance"] == server.instance
        assert labels["insien.created-at"].endswith("Z")
        host = info["HostConfig"]
        assert host["Init"] is True
        assert host["LogConfig"]["Type"] == "none"
        assert host["NetworkMode"] == "none"
        assert host["Privileged"] is False
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"]
        assert host["Memory"]
        config = info["Config"]
        assert (config["OpenStdin"], config["StdinOnce"], config["Tty"]) == (True, False, False)
        # Only the agent's read-only volume: no host path, no Docker socket.
        assert [(m["Type"], m["Destination"], m["RW"]) for m in info["Mounts"]] == [
            ("volume", "/opt/insien", False)
        ]


async def test_destroy_removes_the_container(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with http(server) as client:
        created = (await client.post("/sandbox/create")).json()
        assert len(containers_of(docker_client, created["sandboxId"])) == 1
        async with websocket(created["agentUrl"]) as ws:
            await call(ws, {"id": 1, "type": "exec", "cmd": "true"})
            await client.post(f"/sandbox/{created['sandboxId']}/destroy")
            # connected clients are told, with an event and a close reason
            with trio.fail_after(10):
                event = json.loads(await ws.get_message())
            assert event == {
                "type": "sandboxEnded",
                "sandboxId": created["sandboxId"],
                "reason": "destroyed",
                "detail": "",
            }
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            reason = closed.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (1001, "sandbox destroyed")
        assert containers_of(docker_client, created["sandboxId"]) == []


async def test_no_network_inside(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        reply = await call(
            ws, {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", "cat /proc/net/dev | wc -l"]}
        )
        # only the header lines and loopback: no eth0
        assert int(reply["stdout"]) == 3


async def test_agent_death_fails_in_flight_requests(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message('{"id": "slow", "type": "exec", "cmd": "sleep", "args": ["30"]}')
        await ws.send_message('{"id": "also", "type": "exec", "cmd": "sleep", "args": ["30"]}')
        await until_running(created["agentUrl"], "^sleep 30$", 2)
        await kill_agent(docker_client, created["sandboxId"])
        replies = {}
        for _ in range(2):
            reply = await receive(ws, timeout=15)
            replies[reply["id"]] = reply
        assert replies["slow"]["code"] == "AGENT_GONE"
        assert replies["also"]["code"] == "AGENT_GONE"
        # The connection is told why it ends, as for a destroy, not just closed.
        ended = await receive(ws, timeout=15)
        assert ended["type"] == "sandboxEnded", ended
        assert ended["reason"] == "agent_exited", ended
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001
        async with http(server) as client:
            status = (await client.get(f"/sandbox/{created['sandboxId']}/status")).json()
        assert status["connected"] is False


async def test_a_client_leaving_mid_request_does_not_disturb_the_sandbox(server: Server) -> None:
    async with sandbox(server) as created:
        async with websocket(created["agentUrl"]) as ws:
            await ws.send_message('{"id": 1, "type": "exec", "cmd": "sleep", "args": ["30"]}')
            await until_running(created["agentUrl"], "^sleep 30$")
        # The abandoned request is cancelled in the sandbox (its command killed), and nothing
        # of it reaches the next connection, which reuses its id.
        async with websocket(created["agentUrl"]) as ws:
            echoed = await call(ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["ok"]})
            assert echoed["stdout"] == "ok\n"
            with trio.fail_after(10):
                while True:
                    left = await call(
                        ws, {"id": 2, "type": "exec", "cmd": "pgrep", "args": ["-x", "sleep"]}
                    )
                    if left["exitCode"] == 1:
                        break
                    await trio.sleep(0.2)
            assert (await call(ws, {"id": 3, "type": "ping"}))["type"] == "pong"


def test_graceful_shutdown_removes_its_sandboxes_and_leaves_others(
    server: Server, docker_client: docker.DockerClient
) -> None:
    process, other = start_server(suffix="shutdown")
    try:

        async def make_two() -> list[str]:
            ids = []
            for target in (other, server):
                async with http(target) as client:
                    ids.append((await client.post("/sandbox/create")).json()["sandboxId"])
            return ids

        mine, neighbours = trio.run(make_two)
        started = time.monotonic()
    finally:
        assert stop_server(process) == 0
    assert time.monotonic() - started < 4, "graceful shutdown waited for something idle"
    assert containers_of(docker_client, mine) == []
    assert len(containers_of(docker_client, neighbours)) == 1  # another instance's sandbox

    async def cleanup() -> None:
        async with http(server) as client:
            await client.post(f"/sandbox/{neighbours}/destroy")

    trio.run(cleanup)


def test_without_a_configured_key_one_is_generated_and_printed(
    docker_client: docker.DockerClient,
) -> None:
    process, info = start_server({"INSIEN_API_KEY": ""}, suffix="genkey")
    try:
        match = re.search(r"generated one for this run: (\S+)", info.log())
        assert match, info.log()
        generated = match.group(1)

        async def check() -> None:
            async with http(info, key=generated) as client:
                assert (await client.get("/sandbox/x/status")).status_code == 404
            async with http(info, key=None) as client:
                assert (await client.get("/sandbox/x/status")).status_code == 401
            async with http(info, key="") as client:
                assert (await client.get("/sandbox/x/status")).status_code == 401

        trio.run(check)
    finally:
        assert stop_server(process) == 0
    assert info.log().count(generated) == 1  # printed once, never logged again
