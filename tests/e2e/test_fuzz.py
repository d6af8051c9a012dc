"""Hostile client input through the server to a real agent: requests of every type with
hostile field values, and raw garbage. Every one gets a structured answer, and the connection
and the sandbox serve on (issue 10: the earlier fuzz never got past the first check)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server
from tests.e2e.helpers import Inbox, websocket
from tests.fuzzing import STARTED_TYPES, check_answer, hostile, is_final, requests

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_sandbox(server: Server) -> Iterator[dict[str, Any]]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        created = client.post("/sandbox/create").raise_for_status().json()
        yield created
        client.post(f"/sandbox/{created['sandboxId']}/destroy")


async def final_answer(inbox: Inbox, request_id: str) -> dict[str, Any]:
    """Read the request's messages until its final one; a process it started or follows is
    let go (cancelled) after its first event."""
    while True:
        message = await inbox.next(request_id, timeout=20)
        if is_final(message):
            return message
        if message.get("type") in STARTED_TYPES:
            await inbox.send({"id": f"{request_id}-c", "type": "cancel", "target": request_id})
            await inbox.next(f"{request_id}-c", timeout=20)


async def still_serves(inbox: Inbox) -> None:
    assert (await inbox.call({"id": "probe", "type": "ping"}, timeout=20))["type"] == "pong"
    echo = await inbox.call({"id": "echo", "type": "exec", "cmd": "echo", "args": ["ok"]})
    assert echo["stdout"] == "ok\n", echo


@SETTINGS
@given(request=requests())
def test_every_request_type_with_hostile_values_gets_a_structured_answer(
    fuzz_sandbox: dict[str, Any], request: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with websocket(fuzz_sandbox["agentUrl"]) as ws:
            inbox = Inbox(ws)
            await inbox.send({**request, "id": "fuzz"})
            check_answer(request.get("type"), await final_answer(inbox, "fuzz"))
            await still_serves(inbox)

    trio.run(scenario)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), hostile.map(json.dumps)))
def test_garbage_gets_a_structured_error(fuzz_sandbox: dict[str, Any], raw: Any) -> None:
    async def scenario() -> None:
        async with websocket(fuzz_sandbox["agentUrl"]) as ws:
            inbox = Inbox(ws)
            await ws.send_message(raw)
            with trio.fail_after(20):
                answer = json.loads(await ws.get_message())
            assert answer["type"] == "error", answer
            assert answer["code"] in ("BAD_REQUEST", "UNKNOWN_TYPE"), answer
            assert isinstance(answer["message"], str), answer
            assert answer["message"], answer
            await still_serves(inbox)

    trio.run(scenario)
