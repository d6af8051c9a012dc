"""The Python SDK end to end, blocking and async (asyncio and trio), against a real server."""

from __future__ import annotations

import asyncio
import threading

import anyio
import docker
import pytest

from insien_sandbox import (
    AsyncSandbox,
    AuthenticationError,
    ConnectError,
    RPCError,
    Sandbox,
    SandboxClosedError,
)
from tests.conftest import Server
from tests.e2e.helpers import http

pytestmark = pytest.mark.anyio  # every async test: under asyncio and under trio


def container_exists(client: docker.DockerClient, sandbox_id: str) -> bool:
    found = client.api.containers(all=True, filters={"label": [f"insien.sandbox.id={sandbox_id}"]})
    return bool(found)


async def test_async_sdk_seed_flow(server: Server, docker_client: docker.DockerClient) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        before = sandbox.sandbox_id
        assert before is None  # created on first use, as in the seed
        await sandbox.write_file("hello.js", "console.log('Hello!');")
        assert sandbox.sandbox_id is not None
        result = await sandbox.run_command("node", ["hello.js"])
        assert (result.stdout, result.stderr, result.exit_code, result.ok) == (
            "Hello!\n",
            "",
            0,
            True,
        )
        assert await sandbox.get_file("hello.js") == "console.log('Hello!');"
        status = await sandbox.status()
        assert status["connected"] is True
        sandbox_id = sandbox.sandbox_id
        assert container_exists(docker_client, sandbox_id)
    assert not container_exists(docker_client, sandbox_id)  # the context manager destroyed it


async def test_async_sdk_concurrent_calls_and_errors(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        results: list[str] = []

        async def run(i: int) -> None:
            results.append((await sandbox.run_command("echo", [str(i)])).stdout)

        async with anyio.create_task_group() as nursery:
            for i in range(20):
                nursery.start_soon(run, i)
        assert sorted(results) == sorted(f"{i}\n" for i in range(20))

        with pytest.raises(RPCError) as info:
            await sandbox.get_file("/does/not/exist")
        assert info.value.code == "NOT_FOUND"
        failed = await sandbox.run_command("sh", ["-c", "echo oops >&2; exit 4"])
        assert (failed.stderr, failed.exit_code, failed.ok) == ("oops\n", 4, False)
        await sandbox.write_file("data.bin", bytes(range(256)))
        assert await sandbox.get_file_bytes("data.bin") == bytes(range(256))
        env = await sandbox.run_command("sh", ["-c", "echo $X; pwd"], cwd="/tmp", env={"X": "y"})
        assert env.stdout == "y\n/tmp\n"


async def test_async_sdk_destroy_then_use(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        await sandbox.create()
        await sandbox.destroy()
        await sandbox.destroy()  # twice is harmless
        with pytest.raises(Exception, match="destroyed"):
            await sandbox.run_command("true")


async def test_async_sdk_errors(server: Server) -> None:
    async with AsyncSandbox(api_key="wrong", base_url=server.url) as sandbox:
        with pytest.raises(AuthenticationError):
            await sandbox.run_command("true")
    async with AsyncSandbox(api_key="k", base_url="http://127.0.0.1:1") as sandbox:
        with pytest.raises(ConnectError):
            await sandbox.create()


async def test_async_sdk_sees_a_sandbox_destroyed_elsewhere(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        await sandbox.run_command("true")
        async with http(server) as client:
            await client.post(f"/sandbox/{sandbox.sandbox_id}/destroy")
        with pytest.raises(SandboxClosedError):
            await sandbox.run_command("true")
        # an ended sandbox stays queryable for a while, no longer connected
        assert (await sandbox.status())["connected"] is False
    # leaving the block destroys again: a sandbox that is already gone is not an error


def test_blocking_sdk_seed_flow(server: Server, docker_client: docker.DockerClient) -> None:
    with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
        sandbox.write_file("hello.py", "print('hi from python')")
        result = sandbox.run_command("python3", ["hello.py"])
        assert (result.stdout, result.exit_code) == ("hi from python\n", 0)
        assert sandbox.get_file("hello.py") == "print('hi from python')"
        sandbox_id = sandbox.sandbox_id
        assert sandbox_id is not None
        assert container_exists(docker_client, sandbox_id)
        with pytest.raises(RPCError):
            sandbox.get_file("missing")
    assert not container_exists(docker_client, sandbox_id)


def test_blocking_sdk_reads_key_and_url_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSIEN_API_KEY", server.api_key)
    monkeypatch.setenv("INSIEN_URL", server.url)
    sandbox = Sandbox()
    try:
        assert sandbox.run_command("echo", ["env"]).stdout == "env\n"
        sandbox.destroy()
    finally:
        sandbox.close()


def test_blocking_sdk_inside_a_running_loop_and_from_threads(server: Server) -> None:
    """Jupyter calls the blocking SDK from a thread whose asyncio loop is running; services
    call it from worker threads. Both work, because the SDK's loop is its own thread's."""

    async def notebook_cell() -> list[str]:
        with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
            said = sandbox.run_command("echo", ["from a cell"]).stdout
            listed = Sandbox.list(server.api_key, server.url, state="running")
            assert sandbox.sandbox_id in [info.sandbox_id for info in listed]
        return [said]

    assert asyncio.run(notebook_cell()) == ["from a cell\n"]

    said: list[str] = []

    def worker(n: int) -> None:
        with Sandbox(api_key=server.api_key, base_url=server.url) as sandbox:
            said.append(sandbox.commands.run(f"echo {n}").stdout)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(said) == ["0\n", "1\n", "2\n"]
