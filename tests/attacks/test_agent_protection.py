"""User code runs as an unprivileged user: it cannot reach the agent, and links it plants do not
lead file requests anywhere it could not go itself (issue 5)."""

from __future__ import annotations

import base64
import json
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from tests.attacks.test_containment import attack, run
from tests.conftest import Server
from tests.e2e.helpers import call, http, sandbox, websocket


async def agent_pid(ws: WebSocketConnection) -> int:
    return int((await run(ws, "pgrep -u 0 -x insien-agent"))["stdout"])


async def test_user_code_runs_as_an_unprivileged_user(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        who = await run(ws, 'id -u; id -g; id -G; echo "$HOME $USER"; pwd')
        assert who["stdout"].split("\n")[:5] == [
            "1000",
            "1000",
            "1000",
            "/home/user user",
            "/home/user",
        ]
        status = (await run(ws, "grep -E '^Cap(Eff|Prm)' /proc/self/status"))["stdout"]
        assert all(line.split()[1] == "0000000000000000" for line in status.splitlines())
        assert (await run(ws, "sudo true; su -c true"))["exitCode"] != 0
        # what the file API writes belongs to the user, so user code can change it
        await call(ws, {"id": 1, "type": "write", "path": "mine.txt", "content": "x"})
        await call(ws, {"id": 2, "type": "mkdir", "path": "sub/dir"})
        owners = await run(ws, "stat -c %u:%g mine.txt sub sub/dir && echo y >> mine.txt")
        assert owners["stdout"].split() == ["1000:1000"] * 3
        assert owners["exitCode"] == 0
        # a terminal is the user's too (programs that reopen /dev/tty need that)
        spawned = await call(
            ws,
            {
                "id": 3,
                "type": "spawn",
                "cmd": "sh",
                "args": ["-c", "stat -c %u $(tty); id -u"],
                "pty": {"cols": 80, "rows": 24},
            },
        )
        assert spawned["type"] == "spawnResponse"
        output = ""
        with trio.fail_after(10):
            while True:
                message = json_message(await ws.get_message())
                if message.get("type") == "output":
                    output += message["data"]
                if message.get("type") == "exit":
                    break
        assert output.split() == ["1000", "1000"]


def json_message(raw: str | bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result


async def test_user_code_cannot_kill_trace_or_impersonate_the_agent(server: Server) -> None:
    async def go_for_the_agent(ws: WebSocketConnection) -> None:
        pid = await agent_pid(ws)
        killed = await run(ws, f"kill -9 {pid}")
        assert killed["exitCode"] != 0
        assert "not permitted" in killed["stderr"]
        assert (await run(ws, f"kill -STOP {pid}"))["exitCode"] != 0
        traced = await run(
            ws,
            "python3 -c 'import ctypes, sys; "
            f"sys.exit(ctypes.CDLL(None, use_errno=True).ptrace(16, {pid}, 0, 0) == -1)'",
        )
        assert traced["exitCode"] == 1, "PTRACE_ATTACH must fail"
        # forging protocol lines: the agent's stdout (and its init's) are out of reach
        for target in (f"/proc/{pid}/fd/1", "/proc/1/fd/1", f"/proc/{pid}/mem"):
            forged = await run(ws, f"""echo '{{"id": "x", "type": "pong"}}' > {target}""")
            assert forged["exitCode"] != 0, target
            assert "Permission denied" in forged["stderr"]
        assert (await run(ws, f"ls /proc/{pid}/fd"))["exitCode"] != 0
        assert (await run(ws, "echo x > /opt/insien/agent.pyz"))["exitCode"] != 0
        # the agent is untouched and still answering
        assert await agent_pid(ws) == pid
        pong = await call(ws, {"id": "p", "type": "ping"})
        assert pong["type"] == "pong"

    await attack(server, go_for_the_agent)


async def test_symlinks_planted_in_the_sandbox_lead_nowhere(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        pid = await agent_pid(ws)
        planted = await run(
            ws,
            f"ln -s /etc/shadow shadow && ln -s /proc/{pid}/fd/1 stdout && "
            "ln -s /opt/insien/agent.pyz agent && ln -s /etc etc && ln -s / root && "
            "ln -s /proc/1/root/etc/shadow via-init",
        )
        assert planted["exitCode"] == 0, planted

        async def expect_denied(message: dict[str, Any]) -> None:
            reply = await call(ws, {"id": "f", **message})
            assert reply["type"] == "error", (message, reply)
            assert reply["code"] in ("PERMISSION_DENIED", "NOT_FOUND"), (message, reply)

        await expect_denied({"type": "read", "path": "shadow"})
        await expect_denied({"type": "read", "path": "via-init"})
        await expect_denied({"type": "write", "path": "stdout", "content": '{"type":"pong"}\n'})
        await expect_denied({"type": "write", "path": "agent", "content": "print('owned')"})
        await expect_denied({"type": "write", "path": "etc/passwd", "content": "x", "append": True})
        await expect_denied({"type": "mkdir", "path": "root/opt/insien/x"})
        await expect_denied({"type": "rename", "path": "agent", "newPath": "root/etc/agent"})
        await expect_denied({"type": "remove", "path": "root/opt/insien/agent.pyz"})
        await expect_denied({"type": "list", "path": "root/root"})
        # removing a link removes the link, never what it points at
        removed = await call(ws, {"id": "r", "type": "remove", "path": "etc", "recursive": True})
        assert removed["type"] == "removeResponse", removed
        assert (await run(ws, "test -f /etc/passwd && test ! -e etc"))["exitCode"] == 0

        async with http(server) as client:
            sandbox_id = created["sandboxId"]
            got = await client.get(f"/sandbox/{sandbox_id}/files", params={"path": "shadow"})
            assert got.status_code in (400, 403), got.text  # 400: downloads refuse links
            put = await client.put(
                f"/sandbox/{sandbox_id}/files", params={"path": "agent"}, content=b"owned"
            )
            # uploads land in a temporary file renamed over the name: the link itself is replaced
            assert put.status_code == 200, put.text
        replaced = await run(ws, "test ! -L agent && cat agent")
        assert replaced["stdout"] == "owned"
        # the agent and its executable are intact
        agent = await call(ws, {"id": "s", "type": "stat", "path": "/opt/insien/agent.pyz"})
        assert agent["entry"]["size"] > 1000
        assert (await call(ws, {"id": "p", "type": "ping"}))["type"] == "pong"
        content = await call(
            ws, {"id": "b", "type": "read", "path": "/etc/hostname", "encoding": "base64"}
        )
        assert base64.b64decode(content["content"])  # readable files stay readable


async def test_killing_the_spawner_helper_only_costs_a_new_one(server: Server) -> None:
    """User code can kill the helper that starts its commands (it runs as the user); the agent
    then starts a new one, and still notices when commands the old one started end."""
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        spawned = await call(ws, {"id": 1, "type": "spawn", "cmd": "sleep", "args": ["1"]})
        assert spawned["type"] == "spawnResponse"
        killed = await run(ws, "pkill -9 -x insien-spawner ; echo killed")
        # this command came from the helper it killed, so its answer may be lost with it
        assert killed["type"] in ("execResponse", "error"), killed
        with trio.fail_after(10):
            while True:  # the sleep's exit still arrives, learned from /proc
                message = json_message(await ws.get_message())
                if message.get("id") == 1 and message["type"] == "exit":
                    break
        again = await run(ws, "echo fresh; pgrep -c -x insien-spawner")
        assert again["stdout"] == "fresh\n1\n"  # exactly one helper again
