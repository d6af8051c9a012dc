"""One tenant cannot exhaust the server's memory (issue 18, V4): bytes held for a client that
does not read are bounded per connection and per tenant, past which requests answer `BUSY`;
the agent bounds its own buffers for concurrent large reads; memory is given back when the
connection goes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from tests.conftest import Server, rss_bytes
from tests.e2e.helpers import call, sandbox, websocket

MIB = 1024 * 1024
READS = 48


async def test_a_client_that_never_reads_cannot_grow_the_server(server: Server) -> None:
    async with (
        sandbox(server) as created,
        httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as rest,
    ):
        sandbox_id = created["sandboxId"]
        big = (
            await rest.put(
                f"/sandbox/{sandbox_id}/files",
                params={"path": "big.bin"},
                content=b"\x07" * (16 * MIB),
            )
        ).raise_for_status()
        assert big.json()["bytes"] == 16 * MIB
        await trio.sleep(1)
        before = rss_bytes(server.pid)
        peak = before
        # message_queue_size=1: the client's reader stops at one message, so TCP pushes back.
        async with open_websocket_url(
            created["agentUrl"], max_message_size=64 * MIB, message_queue_size=1
        ) as ws:
            for n in range(READS):
                request = {"id": n, "type": "read", "path": "big.bin", "encoding": "base64"}
                await ws.send_message(json.dumps(request))
            for _ in range(40):  # the agent answers; nobody reads
                await trio.sleep(0.25)
                peak = max(peak, rss_bytes(server.pid))
            answers: dict[int, dict[str, Any]] = {}
            with trio.fail_after(120):
                while len(answers) < READS:
                    message = json.loads(await ws.get_message())
                    answers[message["id"]] = message
        kinds = [a["type"] if a["type"] != "error" else a["code"] for a in answers.values()]
        assert set(kinds) <= {"readResponse", "BUSY"}, kinds
        assert "BUSY" in kinds, "the budget must have refused some"
        assert kinds.count("readResponse") >= 2
        # 48 answers of 22 MB would have been over 1 GB held; the budgets allow 64 MiB.
        assert peak - before < 320 * MIB, f"grew {(peak - before) / MIB:.0f} MiB"
        # the sandbox survived its 48 concurrent reads, and serves a reading client at once
        async with websocket(created["agentUrl"]) as ws:
            reply = await call(ws, {"id": 1, "type": "read", "path": "big.bin", "length": 10})
            assert reply["type"] == "readResponse"
        with trio.fail_after(20):
            while rss_bytes(server.pid) - before > 96 * MIB:  # noqa: ASYNC110
                await trio.sleep(0.25)
