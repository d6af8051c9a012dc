"""Protocol v1 over the raw WebSocket: streaming, processes, PTY, files, cancel, limits."""

from __future__ import annotations

import base64
import json
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from tests.conftest import Server
from tests.e2e.helpers import Inbox, call, receive, sandbox, until_running, websocket

ALL_BYTES = bytes(range(256))


async def collect(
    ws: WebSocketConnection, request_id: Any, timeout: float = 30
) -> list[dict[str, Any]]:
    """Every message for one request, up to and including its final one."""
    messages = []
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            if message.get("id") != request_id:
                continue
            messages.append(message)
            if message["type"] not in ("output", "spawnResponse", "attachResponse"):
                return messages


async def test_streaming_exec_sends_output_then_the_response(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message(
            json.dumps(
                {
                    "id": "s",
                    "type": "exec",
                    "cmd": "sh",
                    "args": ["-c", "echo one; sleep 0.2; echo two >&2; pwd; echo $GREETING"],
                    "cwd": "/tmp",
                    "env": {"GREETING": "hello"},
                    "stream": True,
                }
            )
        )
        messages = await collect(ws, "s")
        outputs = [m for m in messages if m["type"] == "output"]
        final = messages[-1]
        assert final["type"] == "execResponse"
        assert (
            "".join(m["data"] for m in outputs if m["stream"] == "stdout") == "one\n/tmp\nhello\n"
        )
        assert [m["data"] for m in outputs if m["stream"] == "stderr"] == ["two\n"]
        assert all(m["pid"] == final["pid"] for m in outputs)
        assert final["stdout"] == "one\n/tmp\nhello\n"
        assert (final["exitCode"], final["timedOut"], final["truncated"]) == (0, False, False)
        assert final["durationMs"] >= 200


async def test_exec_stdin_and_base64_output_carry_every_byte(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        reply = await call(
            ws,
            {
                "id": 1,
                "type": "exec",
                "cmd": "cat",
                "stdin": base64.b64encode(ALL_BYTES).decode(),
                "encoding": "base64",
            },
        )
        assert reply["encoding"] == "base64"
        assert base64.b64decode(reply["stdout"]) == ALL_BYTES
        await ws.send_message(
            json.dumps(
                {
                    "id": 2,
                    "type": "exec",
                    "cmd": "cat",
                    "stdin": base64.b64encode(ALL_BYTES * 3).decode(),
                    "encoding": "base64",
                    "stream": True,
                }
            )
        )
        messages = await collect(ws, 2)
        streamed = b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "output")
        assert streamed == ALL_BYTES * 3


async def test_all_byte_values_round_trip_through_files(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        encoded = base64.b64encode(ALL_BYTES).decode()
        write = {
            "id": 1,
            "type": "write",
            "path": "bin/all",
            "content": encoded,
            "encoding": "base64",
        }
        assert (await call(ws, write))["type"] == "writeResponse"
        read = await call(ws, {"id": 2, "type": "read", "path": "bin/all", "encoding": "base64"})
        assert base64.b64decode(read["content"]) == ALL_BYTES
        od = await call(
            ws,
            {
                "id": 3,
                "type": "exec",
                "cmd": "sh",
                "args": ["-c", "od -An -tu1 -v bin/all | wc -w"],
            },
        )
        assert od["stdout"].strip() == "256"


async def test_a_character_split_across_chunks_arrives_whole(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        script = (
            r"printf '\303'; sleep 0.3; printf '\251\n'; "
            r"printf '\342\202'; sleep 0.3; printf '\254\n'"
        )
        await ws.send_message(
            json.dumps(
                {"id": "u", "type": "exec", "cmd": "sh", "args": ["-c", script], "stream": True}
            )
        )
        messages = await collect(ws, "u")
        outputs = [m["data"] for m in messages if m["type"] == "output"]
        assert "".join(outputs) == "é\n€\n"
        assert not any("\ufffd" in piece for piece in outputs)
        assert messages[-1]["stdout"] == "é\n€\n"


async def test_timeout_kills_the_whole_process_group(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        started = trio.current_time()
        reply = await call(
            ws,
            {
                "id": "t",
                "type": "exec",
                "cmd": "sh",
                "args": ["-c", "echo before; sleep 100 & sleep 100"],
                "timeout": 1,
            },
        )
        elapsed = trio.current_time() - started
        assert reply["timedOut"] is True
        assert reply["signal"] == "SIGKILL"
        assert reply["stdout"] == "before\n"  # output gathered so far is kept
        assert elapsed < 2.5
        ps = await call(ws, {"id": "ps", "type": "exec", "cmd": "ps", "args": ["-eo", "comm"]})
        assert "sleep" not in ps["stdout"].split()


async def test_a_process_outlives_its_client_and_another_client_attaches(server: Server) -> None:
    async with sandbox(server) as created:
        async with websocket(created["agentUrl"]) as first:
            await first.send_message(
                json.dumps(
                    {
                        "id": "bg",
                        "type": "spawn",
                        "cmd": "sh",
                        "args": ["-c", "echo early; sleep 1.5; echo late; exit 7"],
                    }
                )
            )
            started = await receive(first)
            assert started["type"] == "spawnResponse"
            pid = started["pid"]
            early = await receive(first)
            assert (early["type"], early["data"], early["pid"]) == ("output", "early\n", pid)
        # the first client is gone; the process goes on
        async with websocket(created["agentUrl"]) as second:
            listed = await call(second, {"id": "ls", "type": "processes"})
            (entry,) = [p for p in listed["processes"] if p["pid"] == pid]
            assert entry["running"] is True
            await second.send_message(json.dumps({"id": "at", "type": "attach", "pid": pid}))
            messages = await collect(second, "at")
            assert messages[0]["type"] == "attachResponse"
            assert messages[0]["dropped"] == 0
            text = "".join(m["data"] for m in messages if m["type"] == "output")
            assert text == "early\nlate\n"  # the earlier output is replayed, then it follows live
            assert messages[-1] == {
                "id": "at",
                "type": "exit",
                "pid": pid,
                "exitCode": 7,
                "signal": None,
                "timedOut": False,
                "oom": False,
                "durationMs": messages[-1]["durationMs"],
            }
            # after exit it can still be attached to, for its output and exit status
            await second.send_message(json.dumps({"id": "again", "type": "attach", "pid": pid}))
            replay = await collect(second, "again")
            assert replay[-1]["exitCode"] == 7


async def test_stdin_signal_detach_and_processes(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        inbox = Inbox(ws)
        await inbox.send({"id": "cat", "type": "spawn", "cmd": "cat"})
        pid = (await inbox.next("cat"))["pid"]
        sent = await inbox.call({"id": "in", "type": "stdin", "pid": pid, "data": "ping\n"})
        assert sent == {"id": "in", "type": "stdinResponse", "pid": pid, "bytes": 5}
        echoed = await inbox.next("cat")
        assert (echoed["type"], echoed["data"]) == ("output", "ping\n")
        await inbox.call({"id": "eof", "type": "stdin", "pid": pid, "eof": True})
        exited = await inbox.next("cat")
        assert (exited["type"], exited["exitCode"]) == ("exit", 0)

        await inbox.send({"id": "sl", "type": "spawn", "cmd": "sleep", "args": ["60"]})
        pid = (await inbox.next("sl"))["pid"]
        detached = await inbox.call({"id": "d", "type": "detach", "pid": pid})
        assert detached == {"id": "d", "type": "detachResponse", "pid": pid, "detached": 1}
        assert (await inbox.next("sl")) == {"id": "sl", "type": "detached", "pid": pid}
        signalled = await inbox.call({"id": "k", "type": "signal", "pid": pid, "signal": "TERM"})
        assert (signalled["signal"], signalled["delivered"]) == ("SIGTERM", True)
        with trio.fail_after(10):
            while True:
                listed = await inbox.call({"id": "p", "type": "processes"})
                (entry,) = [p for p in listed["processes"] if p["pid"] == pid]
                if not entry["running"]:
                    break
                await trio.sleep(0.1)
        assert entry["signal"] == "SIGTERM"
        gone = await inbox.call({"id": "x", "type": "stdin", "pid": pid, "data": "x"})
        assert gone["code"] == "NOT_FOUND"
        unknown = await inbox.call({"id": "y", "type": "attach", "pid": 999999})
        assert unknown["code"] == "NOT_FOUND"


async def test_pty_runs_an_interactive_shell(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message(
            json.dumps(
                {
                    "id": "t",
                    "type": "spawn",
                    "cmd": "/bin/bash",
                    "args": ["-i"],
                    "pty": {"cols": 100, "rows": 30},
                    "encoding": "base64",
                }
            )
        )
        inbox = Inbox(ws)
        pid = (await inbox.next("t"))["pid"]
        screen = b""

        async def read_until(marker: bytes) -> None:
            nonlocal screen
            with trio.fail_after(15):
                while marker not in screen:
                    message = await inbox.next("t")
                    assert message["type"] == "output"
                    screen += base64.b64decode(message["data"])

        await inbox.call(
            {"id": 1, "type": "stdin", "pid": pid, "data": "stty size; tty; echo $((6*7))\n"}
        )
        await read_until(b"42\r\n")
        assert b"30 100" in screen
        assert b"/dev/pts/" in screen
        resized = await inbox.call({"id": 2, "type": "resize", "pid": pid, "cols": 120, "rows": 40})
        assert resized["type"] == "resizeResponse"
        await inbox.call({"id": 3, "type": "stdin", "pid": pid, "data": "stty size\n"})
        await read_until(b"40 120")
        await inbox.call({"id": 4, "type": "stdin", "pid": pid, "data": "exit 3\n"})
        with trio.fail_after(15):
            while (message := await inbox.next("t"))["type"] != "exit":
                pass
        assert message["exitCode"] == 3
        no_tty = await inbox.call({"id": 5, "type": "resize", "pid": pid, "cols": 1, "rows": 1})
        assert no_tty["type"] == "error"


async def test_file_api(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:

        async def ok(message: dict[str, Any]) -> dict[str, Any]:
            reply = await call(ws, {"id": "f", **message})
            assert reply["type"] != "error", reply
            return reply

        await ok({"type": "write", "path": "deep/er/file.txt", "content": "abc"})
        await ok({"type": "write", "path": "deep/er/file.txt", "content": "def", "append": True})
        await ok(
            {"type": "write", "path": "run.sh", "content": "#!/bin/sh\necho ran\n", "mode": "755"}
        )
        assert (await ok({"type": "exec", "cmd": "./run.sh"}))["stdout"] == "ran\n"
        assert (await ok({"type": "read", "path": "deep/er/file.txt"}))["content"] == "abcdef"
        part = await ok({"type": "read", "path": "deep/er/file.txt", "offset": 2, "length": 3})
        assert (part["content"], part["size"], part["eof"]) == ("cde", 6, False)
        entry = (await ok({"type": "stat", "path": "run.sh"}))["entry"]
        assert (entry["type"], entry["size"], entry["mode"]) == ("file", 19, 0o755)
        listing = await ok({"type": "list", "path": "deep", "depth": 2})
        assert [(e["name"], e["type"]) for e in listing["entries"]] == [
            ("er", "dir"),
            ("file.txt", "file"),
        ]
        assert set(listing["entries"][0]) >= {"name", "path", "type", "size", "mode", "mtime"}
        assert (await ok({"type": "exists", "path": "deep/er"}))["exists"] is True
        assert (await ok({"type": "exists", "path": "nope"}))["exists"] is False
        await ok({"type": "mkdir", "path": "made/a/b"})
        exists = await call(ws, {"id": "m", "type": "mkdir", "path": "made", "parents": False})
        assert exists["code"] == "ALREADY_EXISTS"
        await ok({"type": "rename", "path": "deep/er/file.txt", "newPath": "moved/file.txt"})
        assert (await ok({"type": "read", "path": "moved/file.txt"}))["content"] == "abcdef"
        not_empty = await call(ws, {"id": "r", "type": "remove", "path": "made"})
        assert not_empty["code"] == "NOT_EMPTY"
        await ok({"type": "remove", "path": "made", "recursive": True})
        assert (await ok({"type": "exists", "path": "made"}))["exists"] is False
        assert (await call(ws, {"id": "d", "type": "read", "path": "moved"}))[
            "code"
        ] == "IS_A_DIRECTORY"


async def test_special_files_never_hang(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await call(ws, {"id": 0, "type": "exec", "cmd": "mkfifo", "args": ["/tmp/fifo"]})
        with trio.fail_after(10):
            special: list[dict[str, Any]] = [
                {"type": "read", "path": "/dev/zero"},
                {"type": "read", "path": "/tmp/fifo"},
                {"type": "write", "path": "/tmp/fifo", "content": "x"},
                {"type": "read", "path": "/dev/urandom", "length": 10},
            ]
            for i, message in enumerate(special):
                reply = await call(ws, {"id": i, **message})
                assert reply["type"] == "error", reply
            # /proc files read like any other, but the agent's own are not to be had (issue 18)
            meminfo = await call(ws, {"id": "m", "type": "read", "path": "/proc/meminfo"})
            assert "MemTotal:" in meminfo["content"]
            status = await call(ws, {"id": "s", "type": "read", "path": "/proc/self/status"})
            assert status["code"] == "PERMISSION_DENIED"
            stat = await call(ws, {"id": "st", "type": "stat", "path": "/tmp/fifo"})
            assert stat["entry"]["type"] == "fifo"


async def test_read_refuses_files_over_the_limit(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        big = 17 * 1024 * 1024  # over the default 16 MiB read limit
        await call(
            ws, {"id": 1, "type": "exec", "cmd": "truncate", "args": ["-s", str(big), "big"]}
        )
        assert (await call(ws, {"id": 2, "type": "read", "path": "big"}))["code"] == "TOO_LARGE"
        piece = await call(
            ws, {"id": 3, "type": "read", "path": "big", "offset": big - 4, "length": 10}
        )
        assert (piece["content"], piece["eof"]) == ("\0" * 4, True)


async def test_cancel_and_ping(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        await ws.send_message(
            json.dumps({"id": "long", "type": "exec", "cmd": "sleep", "args": ["60"]})
        )
        await until_running(created["agentUrl"], "^sleep 60$")
        cancelled = await call(ws, {"id": "c", "type": "cancel", "target": "long"})
        assert cancelled == {
            "id": "c",
            "type": "cancelResponse",
            "target": "long",
            "cancelled": True,
        }
        answer = await receive(ws)
        assert (answer["id"], answer["code"]) == ("long", "CANCELLED")
        nothing = await call(ws, {"id": "c2", "type": "cancel", "target": "never-sent"})
        assert nothing["cancelled"] is False
        pong = await call(ws, {"id": "p", "type": "ping"})
        assert pong["type"] == "pong"
        assert isinstance(pong["time"], float)
        ps = await call(ws, {"id": "ps", "type": "exec", "cmd": "ps", "args": ["-eo", "comm"]})
        assert "sleep" not in ps["stdout"].split()


async def test_a_hundred_concurrent_commands(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for i in range(100):
            await ws.send_message(
                json.dumps(
                    {"id": i, "type": "exec", "cmd": "sh", "args": ["-c", f"sleep 0.5; echo {i}"]}
                )
            )
        started = trio.current_time()
        replies = [await receive(ws) for _ in range(100)]
        assert sorted(r["id"] for r in replies) == list(range(100))
        assert all(r["stdout"] == f"{r['id']}\n" for r in replies)
        assert trio.current_time() - started < 20  # concurrent, not 100 times 0.5 s in a row
