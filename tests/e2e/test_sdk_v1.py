"""The SDK's commands, files and pty namespaces against real sandboxes."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from insien_sandbox import AsyncSandbox, RPCError, Sandbox, SandboxClosedError
from tests.backends import BACKEND
from tests.conftest import Server

pytestmark = pytest.mark.anyio  # every async test: under asyncio and under trio


async def test_commands_run_shell_streaming_timeout_and_stdin(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        result = await sandbox.commands.run("echo $((2+3)) | sed s/5/five/; echo e >&2; exit 2")
        assert (result.stdout, result.stderr, result.exit_code) == ("five\n", "e\n", 2)
        seen: list[str] = []

        async def on_err(data: str) -> None:
            seen.append(f"err:{data}")

        streamed = await sandbox.commands.run(
            "echo a; sleep 0.1; echo b >&2",
            on_stdout=lambda d: seen.append(f"out:{d}"),
            on_stderr=on_err,
        )
        assert seen == ["out:a\n", "err:b\n"]
        assert streamed.stdout == "a\n"
        slow = await sandbox.commands.run("echo start; sleep 30", timeout=0.5)
        assert (slow.timed_out, slow.stdout, slow.signal) == (True, "start\n", "SIGKILL")
        fed = await sandbox.commands.run("tr a-z A-Z", stdin="shout")
        assert fed.stdout == "SHOUT"
        direct = await sandbox.commands.run("echo", ["$HOME", "not expanded"])
        assert direct.stdout == "$HOME not expanded\n"


async def test_background_handle_and_reconnect_from_another_client(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        chunks: list[str] = []
        handle = await sandbox.commands.run(
            "echo first; sleep 1; echo second; exit 4", background=True, on_stdout=chunks.append
        )
        assert handle.pid > 0
        async with AsyncSandbox(
            api_key=server.api_key, base_url=server.url, sandbox_id=sandbox.sandbox_id
        ) as other:
            again = await other.commands.connect(handle.pid)
            result = await again.wait()
            assert (result.stdout, result.exit_code) == ("first\nsecond\n", 4)
            listed = await other.commands.list()
            assert any(p.pid == handle.pid and not p.running for p in listed)
        assert (await handle.wait()).stdout == "first\nsecond\n"
        assert "".join(chunks) == "first\nsecond\n"

        iterated = await sandbox.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.05; done", background=True
        )
        pieces = [chunk.data async for chunk in iterated]
        assert "".join(str(p) for p in pieces) == "1\n2\n3\n"

        cat = await sandbox.commands.run("cat", [], background=True)
        await cat.send_stdin("to cat\n")
        await cat.send_stdin("", eof=True)
        assert (await cat.wait()).stdout == "to cat\n"

        sleeper = await sandbox.commands.run("sleep", ["60"], background=True)
        await sleeper.kill()
        killed = await sleeper.wait()
        assert (killed.exit_code, killed.signal) == (137, "SIGKILL")

        detached = await sandbox.commands.run("sleep", ["60"], background=True)
        await detached.disconnect()
        with pytest.raises(SandboxClosedError):
            await detached.wait()
        assert any(p.pid == detached.pid and p.running for p in await sandbox.commands.list())
        assert await sandbox.commands.kill(detached.pid)

        with pytest.raises(RPCError) as info:
            await sandbox.commands.connect(999999)
        assert info.value.code == "NOT_FOUND"


async def test_files_namespace(server: Server, tmp_path: Path) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        files = sandbox.files
        await files.write("notes/a.txt", "héllo")
        await files.write("notes/a.txt", " more", append=True)
        assert await files.read("notes/a.txt") == "héllo more"
        assert await files.read("notes/a.txt", format="bytes", offset=1, length=2) == "é".encode()
        await files.write("notes/b.bin", bytes(range(256)))
        assert await files.read("notes/b.bin", format="bytes") == bytes(range(256))
        entries = await files.list("notes")
        assert [(e.name, e.type) for e in entries] == [("a.txt", "file"), ("b.bin", "file")]
        assert (await files.stat("notes/b.bin")).size == 256
        assert await files.exists("notes")
        assert not await files.exists("nope")
        await files.mkdir("x/y/z")
        await files.rename("notes/a.txt", "x/y/z/a.txt")
        assert await files.exists("x/y/z/a.txt")
        await files.remove("x", recursive=True)
        assert not await files.exists("x")

        local = tmp_path / "local.bin"
        payload = os.urandom(3 * 1024 * 1024 + 7)
        local.write_bytes(payload)
        assert await files.upload("up/local.bin", local) == len(payload)
        assert await files.download("up/local.bin") == payload
        await files.download("up/local.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == payload
        assert await files.upload("up/raw.bin", b"raw bytes") == 9
        with local.open("rb") as handle:
            assert await files.upload("up/fileobj.bin", handle) == len(payload)


async def test_pty_namespace(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        screen = bytearray()
        sized = anyio.Event()

        def on_data(data: bytes) -> None:
            screen.extend(data)
            if b"20 90" in screen:
                sized.set()

        terminal = await sandbox.pty.create(cols=90, rows=20, on_data=on_data)
        await sandbox.pty.send_input(terminal.pid, "stty size\n")
        with anyio.fail_after(15):
            await sized.wait()
        await sandbox.pty.resize(terminal.pid, cols=50, rows=10)
        await sandbox.pty.send_input(terminal.pid, "stty size; exit 5\n")
        result = await terminal.wait()
        assert result.exit_code == 5
        assert b"10 50" in screen


def test_blocking_namespaces(server: Server) -> None:
    with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        assert sandbox.commands.run("echo blocking").stdout == "blocking\n"
        handle = sandbox.commands.run("echo a; echo b", background=True)
        assert [str(chunk.data) for chunk in handle] in (["a\n", "b\n"], ["a\nb\n"])
        assert handle.wait().exit_code == 0
        sandbox.files.write("f.txt", "blocking file")
        assert sandbox.files.read("f.txt") == "blocking file"
        assert sandbox.files.upload("u.bin", b"\x00\x01") == 2
        assert sandbox.files.download("u.bin") == b"\x00\x01"
        assert [e.name for e in sandbox.files.list(".") if e.name.endswith(".txt")] == ["f.txt"]
        assert sandbox.ping() > 0
        terminal = sandbox.pty.create()
        sandbox.pty.send_input(terminal.pid, "exit 9\n")
        assert terminal.wait().exit_code == 9


def test_metrics_from_the_cgroup(server: Server) -> None:
    with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        idle = sandbox.metrics()
        assert idle.memory_bytes > 0
        assert idle.memory_limit == 1 << 30
        assert idle.pids >= 2  # the agent and its spawner at least
        sandbox.commands.run("sleep 2", background=True)
        # a megabyte written to the writable layer, and a process that spins for a second
        sandbox.commands.run("head -c 1048576 /dev/urandom > /home/user/blob")
        sandbox.commands.run("timeout 1 sh -c 'while :; do :; done'")
        sandbox.commands.run("head -c 2097152 /dev/zero > /tmp/in-tmpfs")
        busy = sandbox.metrics()
        if BACKEND == "kubernetes":
            assert busy.disk_bytes == 0  # a pod's writable layer: see docs/kubernetes.md
        else:
            assert busy.disk_bytes >= 1 << 20
        assert busy.pids > idle.pids
        assert busy.cpu_percent > 20
        assert busy.cpu_seconds > idle.cpu_seconds + 0.5
        assert busy.tmp_bytes is not None
        assert busy.tmp_bytes >= 2 << 20  # /tmp is a tmpfs: not in the writable layer
        assert busy.tmp_limit == 256 << 20
        assert busy.memory_peak is not None
        assert busy.memory_peak >= busy.memory_bytes
        stamps = [point.timestamp for point in busy.series]  # the readings, samples between
        assert idle.timestamp in stamps
        assert stamps[-1] == busy.timestamp


async def test_files_watch(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        await sandbox.files.mkdir("watched/sub")
        flat = await sandbox.files.watch("watched")
        deep = await sandbox.files.watch("watched", recursive=True)
        await sandbox.commands.run(
            "cd watched && echo x > a && chmod 600 a && mv a b && echo y > sub/c && rm b"
        )
        wanted = {("a", "create"), ("a", "write"), ("a", "chmod"), ("a", "rename")}
        wanted |= {("b", "create"), ("b", "remove")}
        seen: set[tuple[str, str]] = set()
        with anyio.fail_after(15):
            async for event in flat:
                seen.add((event.name, event.op))
                if wanted <= seen:
                    break
        deep_seen: set[tuple[str, str]] = set()
        with anyio.fail_after(15):
            async for event in deep:
                deep_seen.add((event.name, event.op))
                if ("sub/c", "create") in deep_seen:
                    break
        await flat.stop()
        await deep.stop()
        assert not any(name.startswith("sub/") for name, _ in seen)
        with pytest.raises(RPCError) as missing:
            await sandbox.files.watch("no-such-dir")
        assert missing.value.code == "NOT_FOUND"


def test_files_watch_blocking_until_the_directory_goes(server: Server) -> None:
    with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        sandbox.files.mkdir("/tmp/w")
        handle = sandbox.files.watch("/tmp/w")
        sandbox.files.write("/tmp/w/f", "x")
        sandbox.commands.run("rm -r /tmp/w")
        names = {(event.name, event.op) for event in handle}  # ends when /tmp/w is gone
        assert {("f", "create"), ("f", "remove")} <= names
        assert handle.ended == "the watched directory was removed"
        assert handle.dropped == 0
