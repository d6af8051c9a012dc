"""Volumes from the CLI (`insien volume …`, `insien sandbox create --volume`) and from the MCP
server's tools (issue 32), as a user and an agent use them: real processes, a real server."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import Server
from tests.e2e.test_cli_sandbox import insien
from tests.e2e.test_mcp import call, params, text_of


def test_the_cli(server: Server, tmp_path: Path) -> None:
    name = f"cli-{secrets.token_hex(4)}"
    made = insien(server, "volume", "create", name, "--size", "4m")
    assert made.returncode == 0, made.stderr
    try:
        local = tmp_path / "in.bin"
        data = secrets.token_bytes(300_000)
        local.write_bytes(data)
        put = insien(server, "volume", "put", name, str(local), "set/in.bin")
        assert put.returncode == 0, put.stderr
        assert put.stdout.split() == [
            str(len(data)),
            hashlib.sha256(data).hexdigest(),
            "set/in.bin",
        ]

        created = insien(
            server, "sandbox", "create", "-q", "--volume", f"{name}:/data:ro", "--timeout", "300"
        )
        assert created.returncode == 0, created.stderr
        sandbox_id = created.stdout.strip()
        try:
            summed = insien(server, "sandbox", "exec", sandbox_id, "sha256sum /data/set/in.bin")
            assert summed.stdout.split()[0] == hashlib.sha256(data).hexdigest()
            refused = insien(server, "sandbox", "exec", sandbox_id, "touch /data/x")
            assert refused.returncode != 0
            info = json.loads(insien(server, "volume", "info", name, "--json").stdout)
            assert info["sandboxes"] == [sandbox_id]
            assert info["bytesUsed"] >= len(data)  # folders count their own size too
            busy = insien(server, "volume", "delete", name)
            assert busy.returncode == 1
            assert "BUSY" in busy.stderr or "mounted" in busy.stderr
        finally:
            insien(server, "sandbox", "kill", sandbox_id)

        back = tmp_path / "back.bin"
        got = insien(server, "volume", "get", name, "set/in.bin", str(back))
        assert got.returncode == 0, got.stderr
        assert back.read_bytes() == data
        listed = json.loads(insien(server, "volume", "ls", name, "set", "--json").stdout)
        assert [(e["name"], e["type"]) for e in listed] == [("in.bin", "file")]
        assert insien(server, "volume", "mkdir", name, "more/deep").returncode == 0
        assert insien(server, "volume", "rm", name, "set").returncode == 0
        names = insien(server, "volume", "ls", name).stdout
        assert "more/" in names
        assert "set" not in names
        assert name in insien(server, "volume", "list").stdout
        bad = insien(server, "sandbox", "create", "--volume", "no-path")
        assert bad.returncode == 2
    finally:
        gone = insien(server, "volume", "delete", name, "--force")
        assert gone.returncode == 0, gone.stderr
    assert insien(server, "volume", "info", name).returncode == 1


@pytest.mark.anyio
async def test_the_mcp_tools(server: Server, anyio_backend: str) -> None:
    name = f"mcp-{secrets.token_hex(4)}"
    async with Client(params(server)) as client:
        made = await call(client, "create_volume", name=name, size_limit="2m")
        assert made == {"name": name, "size_limit": 2 << 20, "bytes_used": 0}
        try:
            wrote = await call(client, "write_volume_file", name=name, path="a/b.txt", content="hi")
            assert (wrote["bytes"], wrote["sha256"]) == (2, hashlib.sha256(b"hi").hexdigest())
            box = await call(client, "create_sandbox", volumes=[{"name": name, "path": "/work"}])
            ran = await call(
                client,
                "run_command",
                sandbox_id=box["sandbox_id"],
                command="cat /work/a/b.txt && echo there > /work/a/c.txt",
            )
            assert ran["stdout"] == "hi"
            await call(client, "destroy_sandbox", sandbox_id=box["sandbox_id"])
            read = await call(client, "read_volume_file", name=name, path="a/c.txt")
            assert read["content"] == "there\n"
            listed = await call(client, "list_volume_files", name=name, path="a")
            assert [e["name"] for e in listed["entries"]] == ["b.txt", "c.txt"]
            assert name in [v["name"] for v in (await call(client, "list_volumes"))["volumes"]]
            missing = await client.call_tool("read_volume_file", {"name": "nope", "path": "x"})
            assert missing.is_error
            assert "list_volumes" in text_of(missing)
        finally:
            await call(client, "delete_volume", name=name, force=True)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the mcp client's home
