"""Attacks from inside a sandbox: each is contained, while a neighbour sandbox keeps answering
`exec` and the server keeps answering /health (issue 5's attack suite, first part)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import docker
import httpx
import trio
from trio_websocket import WebSocketConnection

from tests.conftest import Server, rss_bytes, start_server, stop_server
from tests.e2e.helpers import call, receive, sandbox, websocket

MIB = 1024 * 1024
FULL = 400
"""Processes in a sandbox that show a fork bomb has nearly filled the pids limit (512)."""


@asynccontextmanager
async def neighbour_watch(server: Server) -> AsyncIterator[list[float]]:
    """A neighbour sandbox and /health polled throughout; yields the neighbour's latencies."""
    latencies: list[float] = []
    async with sandbox(server) as other, websocket(other["agentUrl"]) as ws:

        async def watch() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                n = 0
                while True:
                    started = trio.current_time()
                    with trio.fail_after(10):
                        reply = await call(
                            ws, {"id": n, "type": "exec", "cmd": "echo", "args": ["ok"]}
                        )
                        assert reply["stdout"] == "ok\n"
                        assert (await client.get("/health")).status_code == 200
                    latencies.append(trio.current_time() - started)
                    n += 1
                    await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            yield latencies
            nursery.cancel_scope.cancel()
    assert latencies, "the neighbour was never checked"


async def attack(
    server: Server, scenario: Callable[[WebSocketConnection], Awaitable[None]]
) -> list[float]:
    async with neighbour_watch(server) as latencies, sandbox(server) as target:
        async with websocket(target["agentUrl"]) as ws:
            await scenario(ws)
        return latencies


async def run(ws: WebSocketConnection, script: str, timeout: float = 10) -> dict[str, Any]:
    return await call(
        ws, {"id": "a", "type": "exec", "cmd": "sh", "args": ["-c", script], "timeout": timeout}, 60
    )


async def test_fork_bomb(server: Server) -> None:
    async def bomb(ws: WebSocketConnection) -> None:
        # The bomb fills the pids limit with sleepers in its process group and keeps trying
        # for more (a `b | b &` bomb may also die out by itself, which proves nothing); one
        # SIGKILL to the group ends it, if the agent has not already (its shell exits when a
        # fork fails, and what a command left filling the pids limit is ended).
        spawned = await call(
            ws,
            {
                "id": "b",
                "type": "spawn",
                "cmd": "sh",
                "args": ["-c", "while :; do sleep 1000 & done"],
            },
        )
        assert spawned["type"] == "spawnResponse"

        async def full() -> bool:
            """Whether the bomb has nearly filled the pids limit (counted through the file
            API, which needs no process), or has ended: the agent ends what fills it."""
            await ws.send_message(json.dumps({"id": "ls", "type": "list", "path": "/proc"}))
            while (reply := await receive(ws))["id"] != "ls":
                if (reply["id"], reply["type"]) == ("b", "exit"):
                    return True
            return bool(sum(entry["name"].isdigit() for entry in reply["entries"]) >= FULL)

        with trio.fail_after(30):
            while not await full():  # noqa: ASYNC110 (polling the sandbox)
                await trio.sleep(0.1)
        await ws.send_message(
            json.dumps({"id": "k", "type": "signal", "pid": spawned["pid"], "signal": "KILL"})
        )
        ps: dict[str, Any] = {}
        with trio.move_on_after(30):
            while True:
                ps = await receive(ws)
                if ps.get("id") == "k":
                    # Delivered, or nothing was left to signal: once the bomb's shell fails to
                    # fork and exits, the agent ends what filled the pids limit by itself.
                    assert isinstance(ps["delivered"], bool), ps
                    break
            while True:
                ps = await call(ws, {"id": "ps", "type": "exec", "cmd": "ps", "args": ["-e"]}, 30)
                if ps.get("type") == "execResponse" and ps["stdout"].count("\n") < 20:
                    return
                await trio.sleep(0.5)
        raise AssertionError(f"the bomb outlived its SIGKILL: {str(ps)[:3000]}")

    await attack(server, bomb)


async def test_memory_bomb(server: Server) -> None:
    before = rss_bytes(server.pid)

    async def hog(ws: WebSocketConnection) -> None:
        reply = await run(ws, "python3 -c 'b = bytearray(3 * 2**30)'", timeout=30)
        # killed by the kernel inside the sandbox's limit, and reported as such
        assert reply["exitCode"] == 137, reply["stderr"]  # the shell reports its child's SIGKILL
        assert reply["oom"] is True
        assert (await run(ws, "echo survived"))["stdout"] == "survived\n"

    await attack(server, hog)
    assert rss_bytes(server.pid) - before < 32 * MIB


async def test_a_gigabyte_of_output_is_truncated_and_flagged(server: Server) -> None:
    before = rss_bytes(server.pid)

    async def flood(ws: WebSocketConnection) -> None:
        reply = await run(ws, "yes | head -c 1073741824", timeout=120)
        assert reply["exitCode"] == 0
        assert reply["truncated"] is True
        assert len(reply["stdout"]) == 4 * MIB  # the server's cap on a response's output
        assert reply["oom"] is False

    await attack(server, flood)
    assert rss_bytes(server.pid) - before < 64 * MIB


async def test_an_endless_loop_is_stopped_by_its_timeout(server: Server) -> None:
    async def spin(ws: WebSocketConnection) -> None:
        started = trio.current_time()
        reply = await run(ws, "while :; do :; done", timeout=2)
        assert reply["timedOut"] is True
        assert reply["signal"] == "SIGKILL"
        assert trio.current_time() - started < 10
        # nothing of it is left running
        processes = (await run(ws, "ps -eo args"))["stdout"].splitlines()
        assert "sh -c while :; do :; done" not in processes

    await attack(server, spin)


async def test_commands_reading_stdin_forever_block_nothing(server: Server) -> None:
    async def reader(ws: WebSocketConnection) -> None:
        # exec without stdin gets /dev/null: a reader sees EOF at once
        assert (await run(ws, "cat; read line; echo done"))["stdout"] == "done\n"
        # a background reader whose stdin stays open waits, and everything else goes on
        spawned = await call(ws, {"id": "r", "type": "spawn", "cmd": "cat", "timeout": 60})
        assert spawned["type"] == "spawnResponse", spawned
        for n in range(3):
            assert (await run(ws, f"echo {n}"))["stdout"] == f"{n}\n"
        await ws.send_message(
            json.dumps({"id": "k", "type": "signal", "pid": spawned["pid"], "signal": "KILL"})
        )
        answers = {(await receive(ws))["type"] for _ in range(2)}
        assert answers == {"signalResponse", "exit"}

    await attack(server, reader)


async def test_filling_tmp_stops_at_its_size(server: Server) -> None:
    async def fill(ws: WebSocketConnection) -> None:
        reply = await run(ws, "head -c 2000000000 /dev/zero > /tmp/fill", timeout=60)
        assert reply["exitCode"] != 0
        assert "No space left" in reply["stderr"]
        df = await run(ws, "df -m /tmp | tail -1")
        assert int(df["stdout"].split()[1]) <= 256

    await attack(server, fill)


async def test_filling_the_writable_layer_hurts_no_one_else(server: Server) -> None:
    """This machine's overlay2 sits on ext4, where Docker cannot cap a writable layer
    (INSIEN_DISK_LIMIT needs xfs project quotas or btrfs): the write is not stopped, but the
    neighbour and the server carry on, and destroying the sandbox gives the space back."""

    async def fill(ws: WebSocketConnection) -> None:
        reply = await run(ws, "head -c 1073741824 /dev/zero > big && stat -c %s big", timeout=60)
        assert reply["stdout"] == "1073741824\n", reply["stderr"]
        assert (await run(ws, "rm big && echo gone"))["stdout"] == "gone\n"

    await attack(server, fill)


async def test_escape_probes_are_refused(server: Server) -> None:
    async def probe(ws: WebSocketConnection) -> None:
        status = (await run(ws, "cat /proc/self/status"))["stdout"]
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Seccomp"].strip() == "2"  # Docker's default filter is on
        for dropped in ("CapBnd", "CapEff"):
            caps = int(fields[dropped], 16)
            assert not caps & (1 << 13), "NET_RAW"
            assert not caps & (1 << 21), "SYS_ADMIN"
            assert not caps & (1 << 27), "MKNOD"
        assert (await run(ws, "mount -t tmpfs none /mnt"))["exitCode"] != 0
        assert (await run(ws, "echo b > /proc/sysrq-trigger"))["exitCode"] != 0
        raw = await run(
            ws, "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'"
        )
        assert "PermissionError" in raw["stderr"] or "Operation not permitted" in raw["stderr"]
        assert (await run(ws, "mknod /tmp/dev b 8 0"))["exitCode"] != 0
        assert (await run(ws, "ls /var/run/docker.sock"))["exitCode"] != 0
        # no route out: only the loopback interface, and an empty routing table
        interfaces = (await run(ws, "tail -n +3 /proc/net/dev | cut -d: -f1"))["stdout"].split()
        assert interfaces == ["lo"]
        routes = (await run(ws, "tail -n +2 /proc/net/route"))["stdout"].strip()
        assert routes == ""

    await attack(server, probe)


async def test_zombies_are_reaped(server: Server) -> None:
    async def zombies(ws: WebSocketConnection) -> None:
        # each child exits at once and its parent (sh) is gone before it can wait for it
        await run(ws, "for i in $(seq 1000); do (sleep 0.01 &) ; done")
        sleeping = "ps -eo stat=,comm= | grep -v '^Z' | grep -cw sleep || true"
        with trio.fail_after(20):
            while (await run(ws, sleeping))["stdout"].strip() != "0":  # noqa: ASYNC110
                await trio.sleep(0.1)  # until every child has exited: a zombie, or reaped
            while True:
                ps = await run(ws, "ps -eo stat | grep -c '^Z' || true")
                if int(ps["stdout"].strip() or 0) == 0:
                    break
                await trio.sleep(0.5)

    await attack(server, zombies)


def test_a_disk_limit_reaches_docker(docker_client: docker.DockerClient) -> None:
    """INSIEN_DISK_LIMIT becomes `--storage-opt size`: applied where the storage supports it,
    refused by Docker (a structured 503 from create) where it does not, as on this machine."""
    process, other = start_server({"INSIEN_DISK_LIMIT": "2g"}, suffix="disk")

    async def create() -> httpx.Response:
        async with httpx.AsyncClient(base_url=other.url, headers=other.headers) as client:
            response = await client.post("/sandbox/create")
            if response.status_code == 200:
                await client.post(f"/sandbox/{response.json()['sandboxId']}/destroy")
            return response

    try:
        response = trio.run(create)
    finally:
        assert stop_server(process) == 0
    driver = docker_client.info()["Driver"]
    backing = dict(docker_client.info().get("DriverStatus") or []).get("Backing Filesystem")
    if driver == "overlay2" and backing != "xfs":
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "UNAVAILABLE"
        assert "storage-opt" in response.json()["message"]
    else:
        assert response.status_code == 200, response.text
