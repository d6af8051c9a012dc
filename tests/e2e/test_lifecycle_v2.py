"""Sandbox lifecycle: options, states and end reasons, timeouts, keepalive, list and connect."""

from __future__ import annotations

import json

import docker
import trio
from trio_websocket import ConnectionClosed

from insien_sandbox import AsyncSandbox, Sandbox
from tests.conftest import Server
from tests.e2e.helpers import call, containers_of, http, kill_agent, websocket


async def wait_until_removed(client: docker.DockerClient, sandbox_id: str) -> None:
    """A sandbox reads as ended as soon as it ends; its container's removal follows."""
    with trio.fail_after(10):
        while containers_of(client, sandbox_id):  # noqa: ASYNC110 (polling Docker)
            await trio.sleep(0.1)


async def wait_for_state(server: Server, sandbox_id: str, state: str, within: float) -> dict:  # type: ignore[type-arg]
    async with http(server) as client:
        with trio.fail_after(within):
            while True:
                info = (await client.get(f"/sandboxes/{sandbox_id}")).json()
                if info["state"] == state:
                    return info  # type: ignore[no-any-return]
                await trio.sleep(0.2)


async def test_create_options_and_info(server: Server) -> None:
    async with http(server) as client:
        created = (
            await client.post(
                "/sandbox/create",
                json={
                    "timeout": 120,
                    "idleTimeout": 60,
                    "metadata": {"user": "ada", "job": "7"},
                    "env": {"GREETING": "hello"},
                },
            )
        ).json()
        sandbox_id = created["sandboxId"]
        try:
            info = (await client.get(f"/sandboxes/{sandbox_id}")).json()
            assert info["state"] == "running"
            assert (info["timeout"], info["idleTimeout"]) == (120, 60)
            assert info["metadata"] == {"user": "ada", "job": "7"}
            assert info["template"] == "insien-sandbox:latest"
            assert info["endReason"] is None
            async with websocket(created["agentUrl"]) as ws:
                reply = await call(
                    ws, {"id": 1, "type": "exec", "cmd": "printenv", "args": ["GREETING"]}
                )
                assert reply["stdout"] == "hello\n"
                assert (await client.get(f"/sandboxes/{sandbox_id}")).json()["clients"] == 1
            for bad in (
                {"template": "alpine:latest"},
                {"timeout": -1},
                {"timeout": 10**9},
                {"env": {"INSIEN_AGENT_MAX_LINE": "1"}},
                {"privileged": True},
                {"metadata": {"a": 1}},
            ):
                refused = await client.post("/sandbox/create", json=bad)
                assert refused.status_code == 400, bad
                assert refused.json()["code"] == "BAD_REQUEST"
        finally:
            await client.post(f"/sandbox/{sandbox_id}/destroy")
        ended = (await client.get(f"/sandboxes/{sandbox_id}")).json()
        assert (ended["state"], ended["endReason"]) == ("ended", "destroyed")
        assert ended["endedAt"] is not None


async def test_lifetime_expiry_and_keepalive(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with http(server) as client:
        sandbox_id = (await client.post("/sandbox/create", json={"timeout": 2})).json()["sandboxId"]
        kept = (await client.post(f"/sandbox/{sandbox_id}/keepalive", json={"timeout": 6})).json()
        assert kept["state"] == "running"
        await trio.sleep(3)  # past the original lifetime, within the extended one
        assert (await client.get(f"/sandboxes/{sandbox_id}")).json()["state"] == "running"
    info = await wait_for_state(server, sandbox_id, "ended", within=8)
    assert info["endReason"] == "expired"
    await wait_until_removed(docker_client, sandbox_id)


async def test_idle_expiry_and_what_counts_as_activity(
    server: Server, docker_client: docker.DockerClient
) -> None:
    """Margins prove each point both ways: the reaper looks twice a second, so a sandbox idle
    for 4 s has ended by 4.5 s; every check below sits at least a second from that edge."""
    async with http(server) as client:
        created = (await client.post("/sandbox/create", json={"idleTimeout": 4})).json()
        sandbox_id = created["sandboxId"]
        # a connected client keeps it alive however long it stays quiet
        async with websocket(created["agentUrl"]) as ws:
            await trio.sleep(5.5)
            assert (await call(ws, {"id": 1, "type": "ping"}))["type"] == "pong"
        # using it through the API counts as activity: without the upload at 3 s it would
        # have ended by 4.5 s; with it, it is still running at 6 s
        await trio.sleep(3)
        url = f"/sandbox/{sandbox_id}/files"
        assert (await client.put(url, params={"path": "f"}, content=b"x")).status_code == 200
        used_at = trio.current_time()
        await trio.sleep(3)
        assert (await client.get(f"/sandboxes/{sandbox_id}")).json()["state"] == "running"
        # looking at it does not count: polled four times a second, it still ends on time
        with trio.fail_after(8):
            info = (await client.get(f"/sandboxes/{sandbox_id}")).json()
            while info["state"] != "ended":
                await trio.sleep(0.25)
                info = (await client.get(f"/sandboxes/{sandbox_id}")).json()
        idle_for = trio.current_time() - used_at
    assert info["endReason"] == "idle"
    assert 3.9 <= idle_for <= 5.5, idle_for
    await wait_until_removed(docker_client, sandbox_id)


async def test_container_removed_behind_the_servers_back(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with http(server) as client:
        created = (await client.post("/sandbox/create")).json()
        sandbox_id = created["sandboxId"]
        (container,) = containers_of(docker_client, sandbox_id)
        docker_client.api.remove_container(container["Id"], force=True)
    info = await wait_for_state(server, sandbox_id, "ended", within=5)
    assert info["endReason"] == "container_gone"


async def test_agent_killed_inside_its_container(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with http(server) as client:
        created = (await client.post("/sandbox/create")).json()
        sandbox_id = created["sandboxId"]
        async with websocket(created["agentUrl"]) as ws:
            await kill_agent(docker_client, sandbox_id)
            with trio.fail_after(10):  # the server closes the connection, nothing else ends it
                try:
                    while True:
                        message = json.loads(await ws.get_message())
                        assert message["type"] in ("error", "sandboxEnded"), message
                except ConnectionClosed as exc:
                    closed = exc
    assert closed.reason is not None
    # A close frame from the server (1000, or 1001 "going away" when the end was recorded
    # first), not a dropped connection (1006).
    assert closed.reason.code in (1000, 1001), closed.reason
    info = await wait_for_state(server, sandbox_id, "ended", within=5)
    assert info["endReason"] == "agent_exited"
    await wait_until_removed(docker_client, sandbox_id)


async def test_list_filter_paginate_and_connect(server: Server) -> None:
    tag = {"suite": "lifecycle-list"}
    async with (
        AsyncSandbox(
            api_key=server.api_key, base_url=server.url, metadata={**tag, "n": "1"}
        ) as one,
        AsyncSandbox(
            api_key=server.api_key, base_url=server.url, metadata={**tag, "n": "2"}
        ) as two,
    ):
        await one.create()
        await two.create()
        listed = await AsyncSandbox.list(server.api_key, server.url, metadata=tag)
        assert {s.sandbox_id for s in listed} == {one.sandbox_id, two.sandbox_id}
        only = await AsyncSandbox.list(server.api_key, server.url, metadata={**tag, "n": "2"})
        assert [s.sandbox_id for s in only] == [two.sandbox_id]
        async with http(server) as client:
            page = (
                await client.get("/sandboxes", params={"metadata.suite": tag["suite"], "limit": 1})
            ).json()
            assert len(page["sandboxes"]) == 1
            assert page["nextCursor"] == "1"
            rest = (
                await client.get(
                    "/sandboxes", params={"metadata.suite": tag["suite"], "limit": 1, "cursor": 1}
                )
            ).json()
            assert len(rest["sandboxes"]) == 1
            assert rest["nextCursor"] is None
            assert (await client.get("/sandboxes", params={"state": "nope"})).status_code == 400

        await one.files.write("from-one.txt", "shared")
        async with AsyncSandbox.connect(one.sandbox_id or "", server.api_key, server.url) as again:
            assert await again.files.read("from-one.txt") == "shared"
            info = await again.info()
            assert info.metadata == {**tag, "n": "1"}
            extended = await again.set_timeout(7200)
            assert extended.expires_at > info.expires_at
        # leaving `connect` did not destroy it
        assert (await one.info()).state == "running"


def test_blocking_create_options_connect_and_list(server: Server) -> None:
    with Sandbox(
        api_key=server.api_key, base_url=server.url, metadata={"blocking": "yes"}
    ) as sandbox:
        sandbox_id = sandbox.create()
        assert sandbox.info().metadata == {"blocking": "yes"}
        listed = Sandbox.list(
            server.api_key, server.url, metadata={"blocking": "yes"}, state="running"
        )
        assert [s.sandbox_id for s in listed] == [sandbox_id]
        other = Sandbox.connect(sandbox_id, server.api_key, server.url)
        try:
            assert other.commands.run("echo connected").stdout == "connected\n"
        finally:
            other.close()
        assert sandbox.info().state == "running"
    ended = Sandbox.list(server.api_key, server.url, metadata={"blocking": "yes"})
    assert [(s.state, s.end_reason) for s in ended] == [("ended", "destroyed")]


async def test_pause_and_resume(server: Server, docker_client: docker.DockerClient) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url, idle_timeout=1) as sandbox:
        handle = await sandbox.commands.run(
            "while true; do date +%s%N; sleep 0.05; done", background=True
        )
        paused = await sandbox.pause()
        assert paused.state == "paused"
        (container,) = containers_of(docker_client, sandbox.sandbox_id or "")
        assert docker_client.api.inspect_container(container["Id"])["State"]["Paused"] is True
        await trio.sleep(2.5)  # longer than its idle timeout: a paused sandbox never goes idle
        assert (await sandbox.info()).state == "paused"
        resumed = await sandbox.resume()
        assert resumed.state == "running"
        assert (await sandbox.commands.run("echo awake")).stdout == "awake\n"
        await handle.kill()


async def test_snapshot_is_a_template_for_its_owner(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as original:
        await original.files.write("/home/user/project/state.txt", "saved state")
        template = await original.snapshot()
    try:
        assert template.startswith("insien-snapshot:")
        async with AsyncSandbox(
            api_key=server.api_key, base_url=server.url, template=template
        ) as copy:
            assert await copy.files.read("/home/user/project/state.txt") == "saved state"
            assert (await copy.info()).template == template
        async with http(server) as client:
            refused = await client.post(
                "/sandbox/create", json={"template": "insien-snapshot:nope"}
            )
            assert refused.status_code == 400
    finally:
        docker_client.images.remove(template, force=True)
