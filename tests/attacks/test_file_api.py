"""Nothing of the agent is reachable through the file API (issue 18): file requests run in the
agent's own threads, so `/proc/self`, `/proc/thread-self` and `/proc/<agent pid>` named the
agent; they are refused however they are reached. Errors that can be known before a download's
status line come as a proper answer, and special files get specific codes."""

from __future__ import annotations

from trio_websocket import WebSocketConnection

from tests.attacks.test_agent_protection import agent_pid
from tests.attacks.test_containment import run
from tests.conftest import Server
from tests.e2e.helpers import call, http, sandbox, websocket


async def refused(ws: WebSocketConnection, message: dict[str, object]) -> None:
    reply = await call(ws, {"id": "f", **message})
    assert reply["type"] == "error", (message, reply)
    assert reply["code"] == "PERMISSION_DENIED", (message, reply)


async def test_the_agents_own_proc_entries_are_refused_every_way(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        pid = await agent_pid(ws)
        assert (await run(ws, "ln -s /proc/self me && ln -s /proc/thread-self/comm comm"))[
            "exitCode"
        ] == 0
        for path in (
            "/proc/self/maps",
            "/proc/self/status",
            "/proc/self/environ",
            "/proc/thread-self/comm",
            f"/proc/{pid}/status",
            f"/proc/{pid}/task/{pid}/comm",
            "me/cmdline",
            "comm",
        ):
            await refused(ws, {"type": "read", "path": path})
        await refused(ws, {"type": "write", "path": "/proc/thread-self/comm", "content": "owned"})
        await refused(ws, {"type": "write", "path": "comm", "content": "owned"})
        await refused(ws, {"type": "list", "path": "/proc/self/fd"})
        await refused(ws, {"type": "list", "path": "me/task"})
        await refused(ws, {"type": "stat", "path": "/proc/self/exe"})
        exists = await call(ws, {"id": "e", "type": "exists", "path": "/proc/self/fd/1"})
        assert exists["exists"] is False
        # listing /proc itself is fine, and the agent's name is what it was
        listing = await call(ws, {"id": "l", "type": "list", "path": "/proc"})
        assert listing["type"] == "listResponse"
        assert (await run(ws, f"cat /proc/{pid}/comm"))["stdout"] == "insien-agent\n"
        # user processes' own /proc entries stay readable to the user, as for its commands
        own = await run(ws, "cat /proc/self/status | head -1")
        assert own["stdout"].startswith("Name:")


async def test_download_errors_come_before_the_status_line(server: Server) -> None:
    async with sandbox(server) as created, http(server) as client:
        sandbox_id = created["sandboxId"]
        for path in ("/proc/self/environ", "/proc/1/environ"):
            response = await client.get(f"/sandbox/{sandbox_id}/files", params={"path": path})
            assert response.status_code == 403, (path, response.status_code, response.text[:200])
            assert response.json()["code"] == "PERMISSION_DENIED"
        missing = await client.get(f"/sandbox/{sandbox_id}/files", params={"path": "nope"})
        assert missing.status_code == 404
        meminfo = await client.get(f"/sandbox/{sandbox_id}/files", params={"path": "/proc/meminfo"})
        assert meminfo.status_code == 200
        assert b"MemTotal:" in meminfo.content


async def test_a_fifo_without_a_reader_gets_a_specific_error(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        assert (await run(ws, "mkfifo /tmp/pipe"))["exitCode"] == 0
        reply = await call(ws, {"id": 1, "type": "write", "path": "/tmp/pipe", "content": "x"})
        assert reply["type"] == "error"
        assert reply["code"] == "BAD_REQUEST", reply
        assert "FIFO" in reply["message"]
