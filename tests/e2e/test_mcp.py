"""`insien mcp` driven by the official `mcp` client over stdio: the tools, their schemas, the
errors an agent gets, and cleanup of the session's sandboxes when it ends."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.conftest import Server

pytestmark = pytest.mark.anyio

INSIEN = str(Path(sys.executable).parent / "insien")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the mcp client's home; the SDK itself is tested under both


def params(server: Server) -> StdioServerParameters:
    return StdioServerParameters(
        command=INSIEN,
        args=["mcp", "--url", server.url],
        env={"INSIEN_API_KEY": server.api_key, "PATH": "/usr/bin:/bin"},
    )


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def text_of(result: CallToolResult) -> str:
    return " ".join(part.text for part in result.content if isinstance(part, TextContent))


async def state_of(server: Server, sandbox_id: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
        response = await client.get(f"/sandboxes/{sandbox_id}")
    return str(response.json()["state"])


async def test_tools_over_stdio(server: Server) -> None:
    async with Client(params(server)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {
            "create_sandbox",
            "run_command",
            "write_file",
            "read_file",
            "list_files",
            "list_sandboxes",
            "destroy_sandbox",
            "get_preview_url",
            "run_code",
        } <= set(tools)
        schema = tools["run_command"].input_schema
        assert set(schema["required"]) == {"sandbox_id", "command"}
        assert schema["properties"]["timeout_seconds"]["maximum"] == 3600

        made = await call(client, "create_sandbox", metadata={"via": "mcp"})
        sandbox_id = made["sandbox_id"]
        assert made["state"] == "running"
        kept = (await call(client, "create_sandbox", keep=True))["sandbox_id"]
        assert (await call(client, "list_sandboxes"))["sandbox_ids"] == [sandbox_id]

        wrote = await call(
            client, "write_file", sandbox_id=sandbox_id, path="a/b.py", content="print(6 * 7)"
        )
        assert wrote == {"path": "a/b.py", "bytes": 12}
        ran = await call(
            client, "run_command", sandbox_id=sandbox_id, command="python3 b.py", cwd="a"
        )
        assert (ran["stdout"], ran["exit_code"], ran["timed_out"]) == ("42\n", 0, False)
        slow = await call(
            client, "run_command", sandbox_id=sandbox_id, command="sleep 30", timeout_seconds=1
        )
        assert slow["timed_out"] is True
        cell = await call(client, "run_code", sandbox_id=sandbox_id, code="x = 6\nx * 7")
        assert (cell["text"], cell["error"]) == ("42", None)
        kept_state = await call(client, "run_code", sandbox_id=sandbox_id, code="print(x)\nx / 0")
        assert kept_state["stdout"] == "6\n"
        assert kept_state["error"]["name"] == "ZeroDivisionError"
        read = await call(client, "read_file", sandbox_id=sandbox_id, path="a/b.py")
        assert read["content"] == "print(6 * 7)"
        listed = await call(client, "list_files", sandbox_id=sandbox_id, path="a")
        assert [(e["name"], e["type"]) for e in listed["entries"]] == [("b.py", "file")]

        # errors an agent can act on
        missing = await client.call_tool("read_file", {"sandbox_id": sandbox_id, "path": "nope"})
        assert missing.is_error
        assert "NOT_FOUND" in text_of(missing)
        unknown = await client.call_tool("run_command", {"sandbox_id": "gone", "command": "true"})
        assert unknown.is_error
        assert "create_sandbox" in text_of(unknown)
        invalid = await client.call_tool("run_command", {"sandbox_id": sandbox_id, "command": ""})
        assert invalid.is_error

        # a web app in the sandbox, opened through a preview URL without any key
        await call(
            client,
            "run_command",
            sandbox_id=sandbox_id,
            command="python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &",
            cwd="a",
        )
        preview = await call(client, "get_preview_url", sandbox_id=sandbox_id, port=8000)
        async with httpx.AsyncClient() as browser:
            with anyio.fail_after(20):
                while True:
                    page = await browser.get(preview["url"])
                    if page.status_code == 200:
                        break
                    await anyio.sleep(0.2)
        assert "b.py" in page.text

        other = (await call(client, "create_sandbox"))["sandbox_id"]
        assert (await call(client, "destroy_sandbox", sandbox_id=other)) == {"destroyed": other}
        assert await state_of(server, other) == "ended"
    # the session ended: what it made is destroyed, except the one it asked to keep
    assert await state_of(server, sandbox_id) == "ended"
    assert await state_of(server, kept) == "running"
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
        assert (await client.post(f"/sandbox/{kept}/destroy")).status_code == 200


TOKEN_LINE = re.compile(r"Authorization: Bearer (\S+)'")


@asynccontextmanager
async def mcp_over_http(
    server: Server, stderr: IO[bytes], token: str | None = None
) -> AsyncIterator[tuple[Process, str]]:
    """`insien mcp --http` on a free port, until it listens; its URL. Stopped with SIGTERM
    (a graceful stop ends what its sessions made)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"INSIEN_API_KEY": server.api_key, "PATH": "/usr/bin:/bin"}
    if token is not None:
        env["INSIEN_MCP_TOKEN"] = token
    process = await anyio.open_process(
        [INSIEN, "mcp", "--http", "--port", str(port), "--url", server.url],
        env=env,
        stderr=stderr,
    )
    try:
        with anyio.fail_after(30):
            while True:  # until it listens
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.1)
        yield process, f"http://127.0.0.1:{port}/mcp"
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
        await process.aclose()


async def test_streamable_http_transport(server: Server, tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w+b") as stderr:
        async with mcp_over_http(server, stderr) as (_, url):
            # no token given: the server made one and said on stderr how to send it
            found = TOKEN_LINE.search((tmp_path / "stderr").read_text())
            assert found is not None
            headers = {"Authorization": f"Bearer {found.group(1)}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                made = await call(client, "create_sandbox")
                sandbox_id = made["sandbox_id"]
                ran = await call(
                    client, "run_command", sandbox_id=sandbox_id, command="echo over-http"
                )
                assert ran["stdout"] == "over-http\n"
                assert (await call(client, "list_sandboxes"))["sandbox_ids"] == [sandbox_id]
    assert await state_of(server, sandbox_id) == "ended"


async def test_streamable_http_refuses_a_request_without_the_token(
    server: Server, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with (tmp_path / "stderr").open("w+b") as stderr:
        async with mcp_over_http(server, stderr, token) as (_, url), httpx.AsyncClient() as http:
            for refused in (
                {},
                {"Authorization": f"Bearer {token[:-1]}"},
                {"Authorization": f"Bearer {token}x"},
                {"Authorization": f"Basic {token}"},
                {"Authorization": token},
            ):
                answer = await http.post(url, json=initialize, headers={**accept, **refused})
                assert answer.status_code == 401, refused
            # the official client without it gets nowhere (its task group raises the 401)
            with anyio.fail_after(30), pytest.raises(ExceptionGroup):
                async with Client(url) as client:
                    await client.list_tools()
            given = {**accept, "Authorization": f"Bearer {token}"}
            answer = await http.post(url, json=initialize, headers=given)
            assert answer.status_code == 200
        # a token it was given is not printed
        assert token not in (tmp_path / "stderr").read_text()
