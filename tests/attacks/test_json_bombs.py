"""Nesting bombs and NUL bytes, on every front (issue 27, W2-W4).

A body of 200,000 `[` made Python's `json` raise `RecursionError`, which the E2B fronts did not
catch: a 500 with a traceback. Written by a cell on its kernel's protocol pipe, the same bomb
killed the agent's reader of that pipe and the cell hung until its client gave up. A NUL byte
in a command's argv, working folder or environment stalled the agent's spawner for 5-8 s, then
answered `resource_exhausted` and replaced its helper. Each is now refused at once with a
structured error, and the sandbox serves the next request as before.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from tests.conftest import Server
from tests.e2e.helpers import http, receive, sandbox, websocket

BOMB = b"[" * 200_000
ENVD_PORT = 49983
INTERPRETER_PORT = 49999
PROMPT = 2.0
"""A refusal comes at once: well under the spawner's 5 s wait for a helper's answer."""
ENVELOPE = struct.Struct(">BI")
END_STREAM = 0x02


def envelope(data: bytes, flags: int = 0) -> bytes:
    return ENVELOPE.pack(flags, len(data)) + data


def frames(body: bytes) -> list[tuple[int, Any]]:
    """A Connect stream's envelopes as (flags, decoded message)."""
    found = []
    while body:
        flags, length = ENVELOPE.unpack_from(body)
        found.append((flags, json.loads(body[ENVELOPE.size : ENVELOPE.size + length])))
        body = body[ENVELOPE.size + length :]
    return found


@asynccontextmanager
async def e2b_sandbox(server: Server) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """A sandbox made by E2B's create: a client for the E2B front, its id and access token."""
    async with httpx.AsyncClient(base_url=f"{server.url}/e2b", timeout=60) as client:
        created = await client.post(
            "/sandboxes", json={"templateID": "base"}, headers={"X-API-Key": server.api_key}
        )
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandboxID"]
        try:
            yield client, sandbox_id, created.json()["envdAccessToken"]
        finally:
            with trio.CancelScope(shield=True):
                await client.delete(
                    f"/sandboxes/{sandbox_id}", headers={"X-API-Key": server.api_key}
                )


def to_sandbox(sandbox_id: str, token: str, port: int, content_type: str) -> dict[str, str]:
    return {
        "E2b-Sandbox-Id": sandbox_id,
        "E2b-Sandbox-Port": str(port),
        "X-Access-Token": token,
        "Content-Type": content_type,
    }


async def start(
    client: httpx.AsyncClient, sandbox_id: str, token: str, process: dict[str, Any]
) -> tuple[float, list[tuple[int, Any]]]:
    """envd's `process.Process/Start`: how long it took, and the stream's envelopes."""
    headers = to_sandbox(sandbox_id, token, ENVD_PORT, "application/connect+json")
    body = envelope(json.dumps({"process": process}).encode())
    began = time.monotonic()
    with trio.fail_after(30):
        answer = await client.post("/process.Process/Start", headers=headers, content=body)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - began, frames(answer.content)


async def execute(
    client: httpx.AsyncClient, sandbox_id: str, token: str, code: str
) -> list[dict[str, Any]]:
    """The code interpreter's `/execute`: the NDJSON events of one cell."""
    headers = to_sandbox(sandbox_id, token, INTERPRETER_PORT, "application/json")
    with trio.fail_after(60):
        answer = await client.post("/execute", headers=headers, json={"code": code})
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines() if line]


async def test_a_nesting_bomb_is_invalid_argument_on_every_envd_call_kind(server: Server) -> None:
    async with e2b_sandbox(server) as (client, sandbox_id, token):
        unary = to_sandbox(sandbox_id, token, ENVD_PORT, "application/json")
        stream = to_sandbox(sandbox_id, token, ENVD_PORT, "application/connect+json")

        answer = await client.post("/filesystem.Filesystem/Stat", headers=unary, content=BOMB)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "invalid_argument"
        assert "nest" in answer.json()["message"]

        # a server stream's one request message
        answer = await client.post("/process.Process/Start", headers=stream, content=envelope(BOMB))
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "invalid_argument"

        # a client stream's message: the error travels in its end frame
        answer = await client.post(
            "/process.Process/StreamInput",
            headers=stream,
            content=envelope(BOMB) + envelope(b"{}", END_STREAM),
        )
        assert answer.status_code == 200, answer.text
        ((flags, end),) = frames(answer.content)
        assert flags & END_STREAM
        assert end["error"]["code"] == "invalid_argument", end

        # the sandbox serves on
        answer = await client.post(
            "/filesystem.Filesystem/Stat", headers=unary, json={"path": "/home/user"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
        _, events = await start(
            client, sandbox_id, token, {"cmd": "/bin/echo", "args": ["still", "serving"]}
        )
        assert {"event": {"data": {"stdout": "c3RpbGwgc2VydmluZwo="}}} in [m for _, m in events]


async def test_a_nesting_bomb_is_a_400_on_the_code_interpreter(server: Server) -> None:
    async with e2b_sandbox(server) as (client, sandbox_id, token):
        headers = to_sandbox(sandbox_id, token, INTERPRETER_PORT, "application/json")
        for path in ("/execute", "/contexts"):
            answer = await client.post(path, headers=headers, content=BOMB)
            assert answer.status_code == 400, (path, answer.text)
            assert "nests deeper" in answer.text
            assert "Traceback" not in answer.text
        events = await execute(client, sandbox_id, token, "40 + 2")
        assert [e["text"] for e in events if e["type"] == "result"] == ["42"]


async def test_a_cell_that_writes_a_bomb_on_its_kernels_pipe_gets_an_error(
    server: Server,
) -> None:
    """The kernel's protocol events travel on a pipe user code can reach (here through the
    kernel object behind `display`): the agent drops the bomb, the cell ends with an error
    saying so, and the context runs the next cell."""
    bomb = "display.__self__._proto.write('[' * 200_000 + '\\n')\n'written'"
    async with e2b_sandbox(server) as (client, sandbox_id, token):
        assert [
            e["text"] for e in await execute(client, sandbox_id, token, "x = 41") if "text" in e
        ] == []
        events = await execute(client, sandbox_id, token, bomb)
        errors = [e for e in events if e["type"] == "error"]
        assert [e["name"] for e in errors] == ["ProtocolError"], events
        assert "nested deeper" in errors[0]["value"]
        assert events[-1]["type"] == "number_of_executions"
        # the same context, its variables kept
        events = await execute(client, sandbox_id, token, "x + 1")
        assert [e["text"] for e in events if e["type"] == "result"] == ["42"]
        assert not [e for e in events if e["type"] == "error"]


NUL_COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("cmd", {"cmd": "/bin/ec\x00ho"}),
    ("args", {"cmd": "/bin/echo", "args": ["a\x00b"]}),
    ("cwd", {"cmd": "/bin/echo", "cwd": "/tmp\x00"}),
    ("env", {"cmd": "/bin/echo", "env": {"NAME\x00": "value"}}),
    ("env", {"cmd": "/bin/echo", "env": {"NAME": "va\x00lue"}}),
]


async def test_a_nul_byte_in_a_command_is_a_bad_request_at_once_on_the_websocket(
    server: Server,
) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for n, (field, fields) in enumerate(NUL_COMMANDS):
            for kind in ("exec", "spawn"):
                began = time.monotonic()
                await ws.send_message(json.dumps({"id": f"{kind}{n}", "type": kind, **fields}))
                reply = await receive(ws)
                took = time.monotonic() - began
                assert (reply["id"], reply["type"], reply["code"]) == (
                    f"{kind}{n}",
                    "error",
                    "BAD_REQUEST",
                ), reply
                assert field in reply["message"], reply
                assert "NUL" in reply["message"], reply
                assert took < PROMPT, (fields, took)
        await ws.send_message(
            json.dumps({"id": "code", "type": "runCode", "code": "1", "envs": {"A": "\x00"}})
        )
        reply = await receive(ws)
        assert (reply["type"], reply["code"]) == ("error", "BAD_REQUEST"), reply
        await ws.send_message(
            json.dumps({"id": "ok", "type": "exec", "cmd": "/bin/echo", "args": ["fine"]})
        )
        reply = await receive(ws)
        assert (reply["type"], reply["exitCode"], reply["stdout"]) == ("execResponse", 0, "fine\n")


async def test_a_nul_byte_in_a_command_is_invalid_argument_at_once_on_envd(
    server: Server,
) -> None:
    async with e2b_sandbox(server) as (client, sandbox_id, token):
        for field, fields in NUL_COMMANDS:
            process = {**fields}
            if "env" in process:
                process["envs"] = process.pop("env")
            took, events = await start(client, sandbox_id, token, process)
            ((flags, end),) = events
            assert flags & END_STREAM
            assert end["error"]["code"] == "invalid_argument", (process, end)
            assert field in end["error"]["message"], end
            assert took < PROMPT, (process, took)
        took, events = await start(client, sandbox_id, token, {"cmd": "/bin/echo", "args": ["ok"]})
        assert {"event": {"data": {"stdout": "b2sK"}}} in [m for _, m in events]
        assert took < PROMPT


async def test_a_nul_byte_in_a_sandboxs_env_is_refused_at_create(server: Server) -> None:
    """Every command of the sandbox would get these variables: none could start."""
    async with http(server) as client:
        for env in ({"NAME": "va\x00lue"}, {"NA\x00ME": "value"}):
            answer = await client.post("/sandbox/create", json={"env": env})
            assert answer.status_code == 400, answer.text
            assert answer.json()["code"] == "BAD_REQUEST"
            assert "NUL" in answer.json()["message"]
            answer = await client.post("/e2b/sandboxes", json={"envVars": env})
            assert answer.status_code == 400, answer.text
            assert "NUL" in answer.json()["message"]
