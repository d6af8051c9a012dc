"""Restart recovery (issue 4): the server killed or stopped while sandboxes work, then started
again, finds every sandbox, its files, its processes and what they produced meanwhile."""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import anyio
import docker
import pytest
import trio
from trio_websocket import ConnectionClosed

from insien_sandbox import AsyncSandbox, SandboxClosedError
from tests.conftest import Server
from tests.e2e.helpers import (
    call,
    containers_of,
    http,
    kill_agent,
    receive,
    until_running,
    websocket,
)
from tests.e2e.restartable import Restartable, restartable

__all__ = ["restartable"]  # the fixture, used by name


def ws_url(server: Server, sandbox_id: str) -> str:
    return server.url.replace("http://", "ws://") + f"/agent/{sandbox_id}"


async def sandbox_info(server: Server, sandbox_id: str) -> dict[str, Any]:
    async with http(server) as client:
        response = await client.get(f"/sandboxes/{sandbox_id}")
        assert response.status_code == 200, response.text
        info: dict[str, Any] = response.json()
        return info


async def until_sleeping(sandbox: AsyncSandbox, count: int) -> None:
    """Until `count` `sleep` commands run in the sandbox: the calls in flight have started."""
    probe = ["-c", "-x", "sleep"]
    with anyio.fail_after(15):
        while (await sandbox.run_command("pgrep", probe)).stdout != f"{count}\n":  # noqa: ASYNC110
            await anyio.sleep(0.05)


def test_a_killed_server_finds_everything_again(
    restartable: Restartable, docker_client: docker.DockerClient
) -> None:
    server = restartable.start()

    async def before() -> dict[str, Any]:
        async with http(server) as client:
            keeper = (
                await client.post(
                    "/sandbox/create", json={"timeout": 600, "metadata": {"role": "keeper"}}
                )
            ).json()
            short = (await client.post("/sandbox/create", json={"timeout": 3})).json()
            doomed = (await client.post("/sandbox/create")).json()
            kept = await client.post(
                f"/sandbox/{keeper['sandboxId']}/keepalive", json={"timeout": 900}
            )
            assert kept.status_code == 200
        ws_context = websocket(keeper["agentUrl"])
        ws = await ws_context.__aenter__()
        try:
            wrote = await call(
                ws, {"id": 1, "type": "write", "path": "notes.txt", "content": "kept"}
            )
            assert wrote["type"] == "writeResponse"
            script = "for i in $(seq 1 20); do echo line $i; sleep 0.1; done"
            spawned = await call(
                ws, {"id": 2, "type": "spawn", "cmd": "sh", "args": ["-c", script]}
            )
            assert spawned["type"] == "spawnResponse"
            # a foreground command still running when the server dies
            await ws.send_message(
                json.dumps(
                    {
                        "id": 3,
                        "type": "exec",
                        "cmd": "sh",
                        "args": ["-c", "sleep 1; echo finished > after.txt"],
                    }
                )
            )
            await until_running(keeper["agentUrl"], "^sleep 1$")
            # SIGKILL while the client is still connected: no chance to tidy or cancel anything
            restartable.kill()
        finally:
            with trio.move_on_after(5), suppress(Exception):
                await ws_context.__aexit__(None, None, None)
        return {
            "keeper": keeper["sandboxId"],
            "short": short["sandboxId"],
            "doomed": doomed["sandboxId"],
            "pid": spawned["pid"],
        }

    made = trio.run(before)
    assert len(containers_of(docker_client, made["keeper"])) == 1
    trio.run(kill_agent, docker_client, made["doomed"])  # its container stops meanwhile
    trio.run(trio.sleep, 3.5)  # the short one's lifetime passes; the commands finish
    server = restartable.start()

    async def after() -> None:
        keeper = await sandbox_info(server, made["keeper"])
        assert keeper["state"] == "running"
        assert keeper["metadata"] == {"role": "keeper"}
        expires = datetime.fromisoformat(keeper["expiresAt"].replace("Z", "+00:00"))
        assert (expires - datetime.now(UTC)).total_seconds() > 800  # the keepalive survived
        short = await sandbox_info(server, made["short"])
        assert short["state"] == "ended"
        assert short["endReason"] == "expired"
        assert containers_of(docker_client, made["short"]) == []
        doomed = await sandbox_info(server, made["doomed"])
        assert (doomed["state"], doomed["endReason"]) == ("ended", "agent_exited")
        assert containers_of(docker_client, made["doomed"]) == []

        key = [("X-API-Key", restartable.env["INSIEN_API_KEY"])]
        async with websocket(ws_url(server, made["keeper"]), dict(key)) as ws:
            read = await call(ws, {"id": 1, "type": "read", "path": "notes.txt"})
            assert read["content"] == "kept"
            done = await call(ws, {"id": 2, "type": "read", "path": "after.txt"})
            assert done["content"] == "finished\n"  # it ran to the end while nobody watched
            # the background process's whole output, produced while the server was down
            await ws.send_message(json.dumps({"id": 3, "type": "attach", "pid": made["pid"]}))
            output = ""
            while True:
                message = await receive(ws)
                if message["type"] == "output":
                    output += message["data"]
                elif message["type"] == "exit":
                    break
            assert output.splitlines() == [f"line {i}" for i in range(1, 21)]
            assert message["exitCode"] == 0
            echo = await call(ws, {"id": 4, "type": "exec", "cmd": "echo", "args": ["ok"]})
            assert echo["stdout"] == "ok\n"

    trio.run(after)


def test_sigterm_keeps_sandboxes_running_for_the_next_start(
    restartable: Restartable, docker_client: docker.DockerClient
) -> None:
    server = restartable.start()
    key = {"X-API-Key": restartable.env["INSIEN_API_KEY"]}

    async def before() -> tuple[str, int, int]:
        async with http(server) as client:
            created = (await client.post("/sandbox/create")).json()
        async with websocket(created["agentUrl"]) as ws:
            spawned = await call(ws, {"id": 1, "type": "spawn", "cmd": "sleep", "args": ["300"]})
            # a client still connected when the server stops is told it is a restart
            codes: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    trio.to_thread.run_sync, lambda: codes.append(restartable.stop())
                )
                with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            assert codes == [0]
            assert closed.value.reason is not None
            return created["sandboxId"], spawned["pid"], closed.value.reason.code

    sandbox_id, pid, close_code = trio.run(before)
    assert close_code == 1012
    (container,) = containers_of(docker_client, sandbox_id)
    assert container["State"] == "running"
    server = restartable.start()

    async def after() -> None:
        assert (await sandbox_info(server, sandbox_id))["state"] == "running"
        async with websocket(ws_url(server, sandbox_id), key) as ws:
            listed = await call(ws, {"id": 1, "type": "processes"})
            assert pid in [p["pid"] for p in listed["processes"] if p["running"]]

    trio.run(after)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sdk_calls_in_flight_get_their_answers_across_a_restart(
    restartable: Restartable, backend: str
) -> None:
    server = restartable.start()

    async def scenario() -> dict[str, str]:
        results: dict[str, str] = {}
        async with AsyncSandbox(
            api_key=restartable.env["INSIEN_API_KEY"], base_url=server.url
        ) as sandbox:
            assert (await sandbox.run_command("true")).ok

            async def run(name: str, script: str) -> None:
                result = await sandbox.commands.run("sh", ["-c", script])
                results[name] = result.stdout

            async with anyio.create_task_group() as tasks:
                # one finishes while the server is down, one after it is back
                tasks.start_soon(run, "early", "sleep 1; echo early")
                tasks.start_soon(run, "late", "sleep 4; echo late")
                await until_sleeping(sandbox, 2)
                await anyio.to_thread.run_sync(restartable.kill)
                await anyio.sleep(1.5)
                await anyio.to_thread.run_sync(restartable.start)
            # and the connection is back for new work
            results["after"] = (await sandbox.run_command("echo", ["after"])).stdout
        return results

    # the SDK reconnects and resumes alike under asyncio and trio
    outcome = anyio.run(scenario, backend=backend)
    assert outcome == {"early": "early\n", "late": "late\n", "after": "after\n"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sdk_calls_fail_clearly_once_the_reconnect_window_has_passed(
    restartable: Restartable, backend: str
) -> None:
    """A server that does not come back: the call waiting on it fails with a typed error after
    the reconnect window, not a hang."""
    server = restartable.start()

    async def scenario() -> tuple[str, float]:
        async with AsyncSandbox(
            api_key=restartable.env["INSIEN_API_KEY"], base_url=server.url, reconnect_window=2
        ) as sandbox:
            sandbox.keep()  # the server will be gone; the fixture's last start ends it
            assert (await sandbox.run_command("true")).ok
            failed: list[BaseException] = []

            async def run() -> None:
                try:
                    await sandbox.commands.run("sleep 60")
                except SandboxClosedError as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                await until_sleeping(sandbox, 1)
                await anyio.to_thread.run_sync(restartable.kill)
                started = anyio.current_time()
                with anyio.fail_after(30):
                    while not failed:  # noqa: ASYNC110 (waiting on the other task)
                        await anyio.sleep(0.1)
            return str(failed[0]), anyio.current_time() - started

    message, waited = anyio.run(scenario, backend=backend)
    assert "connection lost for over 2s" in message
    assert 2 <= waited < 20
