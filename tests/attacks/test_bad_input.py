"""Hostile input from clients gets a structured answer and nothing else breaks (issue 18):
template names never reach a Docker API path unchecked, and nesting bombs in a WebSocket
frame or a REST body are a BAD_REQUEST, not a closed connection."""

from __future__ import annotations

import json

import docker
import trio

from tests.conftest import Server
from tests.e2e.helpers import containers_of, http, receive, sandbox, websocket


async def test_template_names_are_checked_before_any_docker_call(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created, http(server) as client:
        (existing,) = containers_of(docker_client, created["sandboxId"])
        answers = []
        for target in (existing["Id"], "0" * 64):
            probe = f"insien-snapshot:x/../../containers/{target}"
            response = await client.post("/sandbox/create", json={"template": probe})
            answers.append((response.status_code, response.json()["code"]))
        # The same answer whether the container exists or not: no oracle.
        assert answers == [(400, "BAD_REQUEST"), (400, "BAD_REQUEST")]
        for bad in ("../etc", "a b", "UPPER:case", "x:" + "t" * 200, "x?y", "x#y", "x/../y"):
            response = await client.post("/sandbox/create", json={"template": bad})
            assert response.status_code == 400, (bad, response.text)
        # a well-formed name the operator does not allow is refused as before
        response = await client.post("/sandbox/create", json={"template": "python:3.11"})
        assert response.status_code == 400
        assert "not allowed" in response.json()["message"]


async def test_a_nesting_bomb_frame_is_a_bad_request_and_the_connection_carries_on(
    server: Server,
) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for bomb in ("[" * 100_000, '{"id": 1, "type": "exec", "cmd": ' + "[" * 100_000):
            await ws.send_message(bomb)
            reply = await receive(ws)
            assert reply["type"] == "error"
            assert reply["code"] == "BAD_REQUEST"
        await ws.send_message(json.dumps({"id": "p", "type": "ping"}))
        assert (await receive(ws))["type"] == "pong"


async def test_a_nesting_bomb_body_is_a_bad_request(server: Server) -> None:
    async with http(server) as client:
        response = await client.post(
            "/sandbox/create",
            content=b'{"metadata": ' + b"[" * 100_000,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["code"] == "BAD_REQUEST"
        with trio.fail_after(5):
            assert (await client.get("/health")).status_code == 200
