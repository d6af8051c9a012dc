"""Arbitrary client input through the server to a real agent: always a structured answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from insien.protocol import REQUEST_TYPES
from tests.conftest import Server
from tests.e2e.helpers import Inbox, websocket

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Harmless field values: no request here may run a real command or touch real paths.
fields = st.dictionaries(
    st.sampled_from(
        [
            "path",
            "pid",
            "cmd",
            "args",
            "data",
            "content",
            "encoding",
            "offset",
            "length",
            "depth",
            "cols",
            "rows",
            "signal",
            "target",
            "stream",
            "mode",
            "pty",
            "timeout",
            "newPath",
            "eof",
        ]
    ),
    json_values,
    max_size=5,
)
requests = st.builds(
    lambda kind, extra: {**extra, "type": kind},
    st.sampled_from(
        [*sorted(REQUEST_TYPES - {"exec", "spawn", "remove", "rename", "write"}), "nope"]
    ),
    fields,
)


@pytest.fixture(scope="module")
def fuzz_sandbox(server: Server) -> Iterator[dict[str, Any]]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        created = client.post("/sandbox/create").raise_for_status().json()
        yield created
        client.post(f"/sandbox/{created['sandboxId']}/destroy")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        json_values.map(json.dumps),
        requests.map(json.dumps),
    )
)
def test_any_message_gets_a_structured_answer(fuzz_sandbox: dict[str, Any], raw: Any) -> None:
    async def scenario() -> None:
        async with websocket(fuzz_sandbox["agentUrl"]) as ws:
            inbox = Inbox(ws)
            if isinstance(raw, bytes):
                await ws.send_message(raw)
            else:
                await ws.send_message(raw)
            probe = await inbox.call({"id": "probe-after", "type": "ping"}, timeout=20)
            assert probe["type"] == "pong"  # the connection and the agent both survived

    trio.run(scenario)
