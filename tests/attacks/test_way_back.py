"""User code that breaks the machinery commands need cannot leave its sandbox unusable (issue
18): a stopped spawner helper never makes a timeout hang, and a fork bomb that escaped its exec
is ended by killing every process of the sandbox user, by RPC, REST or the SDK."""

from __future__ import annotations

import json

import docker
import httpx
import trio
from trio_websocket import WebSocketConnection

from insien_sandbox import AsyncSandbox
from tests.attacks.test_containment import attack, run
from tests.conftest import Server
from tests.e2e.helpers import call, containers_of, receive, sandbox, websocket

HELPER = "$(pgrep -u 1000 -x insien-spawner)"


async def test_a_helper_stopped_under_a_running_command_cannot_stall_its_timeout(
    server: Server,
) -> None:
    async def stop_the_parent(ws: WebSocketConnection) -> None:
        started = trio.current_time()
        # The command's parent is the helper: stop it, then outlive the timeout.
        reply = await run(ws, "kill -STOP $PPID; sleep 100", timeout=2)
        if reply["type"] == "error":
            # Stopped before it told the agent the command started: the spawn fails clearly.
            assert reply["code"] == "BUSY", reply
            assert "replaced" in reply["message"], reply
        else:
            assert reply["type"] == "execResponse", reply
            assert reply["timedOut"] is True
        assert trio.current_time() - started < 15
        # the helper was replaced: commands start again
        again = await run(ws, "echo again")
        assert again.get("stdout") == "again\n", again

    await attack(server, stop_the_parent)


async def test_a_stopped_helper_fails_the_next_spawn_clearly_then_is_replaced(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        assert (await run(ws, "true"))["exitCode"] == 0  # the helper is up
        (container,) = containers_of(docker_client, created["sandboxId"])
        # Stopped from outside (as user code could, or a debugger), between two commands.
        stopped = docker_client.containers.get(container["Id"]).exec_run(
            ["sh", "-c", f"kill -STOP {HELPER}"]
        )
        assert stopped.exit_code == 0, stopped.output
        await ws.send_message(
            json.dumps({"id": "s", "type": "exec", "cmd": "sleep", "args": ["10"], "timeout": 2})
        )
        with trio.fail_after(20):
            reply = await receive(ws)
        assert reply["type"] == "error", reply
        assert reply["code"] == "BUSY"
        assert "replaced" in reply["message"]
        again = await run(ws, "echo again")
        assert again.get("stdout") == "again\n", again


async def process_count(ws: WebSocketConnection) -> int:
    listing = await call(ws, {"id": "ls", "type": "list", "path": "/proc"})
    return sum(entry["name"].isdigit() for entry in listing.get("entries", []))


async def test_kill_all_ends_a_fork_bomb_that_escaped_its_exec(server: Server) -> None:
    async def escaped_bomb(ws: WebSocketConnection) -> None:
        # setsid: the bombs leave the exec's process group and session; the exec returns.
        # One fills the pids limit with sleepers and keeps trying; one forks without end.
        for bomb in ("while :; do sleep 1000 & done", "b() { b | b & }; b"):
            started = await run(ws, f"setsid sh -c '{bomb}' >/dev/null 2>&1 &")
            assert started["exitCode"] == 0, started
        # Until the bombs have grown (counted through the file API, which needs no process):
        # a slow machine may take longer than a fast one to fork fifty.
        with trio.fail_after(30):
            while await process_count(ws) < 50:  # noqa: ASYNC110 (polling the sandbox)
                await trio.sleep(0.2)
        # Passes until nothing of the user is left for a while: slow on a loaded 2-core CI.
        killed = await call(ws, {"id": "k", "type": "killAll"}, timeout=90)
        assert killed["type"] == "killAllResponse", killed
        # How many were alive at that instant depends on the machine's load (bombs' children
        # also die by themselves when a fork fails); what counts is that none is left.
        assert killed["killed"] > 0
        with trio.fail_after(30):
            while True:
                ps = await call(ws, {"id": "ps", "type": "exec", "cmd": "ps", "args": ["-e"]})
                if ps.get("type") == "execResponse" and ps["stdout"].count("\n") < 10:
                    break
                await trio.sleep(0.5)

    await attack(server, escaped_bomb)


async def test_a_timeout_ends_a_fork_storm_in_its_group_and_the_sandbox_serves_on(
    server: Server,
) -> None:
    async def storm_in_the_foreground(ws: WebSocketConnection) -> None:
        # Busy loops started without end until the pids limit is full; the shell itself
        # never finishes, so only the timeout ends it.
        reply = await run(ws, "while :; do (while :; do :; done) & done", timeout=2)
        assert reply["timedOut"] is True
        with trio.fail_after(30):
            while (await run(ws, "echo usable")).get("stdout") != "usable\n":  # noqa: ASYNC110
                await trio.sleep(0.5)
        assert (await run(ws, "pgrep -u 1000 -c sh || true"))["stdout"].strip() in ("0", "1")

    await attack(server, storm_in_the_foreground)


async def test_kill_all_over_rest_and_the_sdk(server: Server) -> None:
    async with (
        sandbox(server) as created,
        httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as rest,
    ):
        sandbox_id = created["sandboxId"]
        async with websocket(created["agentUrl"]) as ws:
            await run(ws, "setsid sleep 1000 & setsid sleep 1000 &")
            answer = await rest.post(f"/sandbox/{sandbox_id}/kill-all")
            assert answer.status_code == 200, answer.text
            assert answer.json()["sandboxId"] == sandbox_id
            assert answer.json()["killed"] >= 3  # two sleeps and the helper at least
            assert (await run(ws, "pgrep -u 1000 -x sleep"))["exitCode"] == 1
        other = await rest.post("/sandbox/00000000-0000-0000-0000-000000000000/kill-all")
        assert other.status_code == 404
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.commands.run("setsid sleep 1000 &")
        assert await box.commands.kill_all() >= 1
        result = await box.commands.run("pgrep -u 1000 -x sleep")
        assert result.exit_code == 1
