"""Back-pressure end to end: slow and stalled readers slow the producer, memory stays flat."""

from __future__ import annotations

import json

import trio

from tests.conftest import Server, rss_bytes
from tests.e2e.helpers import call, sandbox, websocket

MIB = 1024 * 1024


async def test_yes_to_a_slow_reader_loses_nothing_and_memory_stays_bounded(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        baseline = rss_bytes(server.pid)
        peak = baseline
        await ws.send_message(
            json.dumps({"id": "y", "type": "exec", "cmd": "yes", "stream": True, "timeout": 5})
        )
        streamed: list[str] = []
        final = None
        with trio.fail_after(60):
            while final is None:
                message = json.loads(await ws.get_message())
                if message["type"] == "output":
                    streamed.append(message["data"])
                    await trio.sleep(0.002)  # a slow reader
                    if len(streamed) % 50 == 0:
                        peak = max(peak, rss_bytes(server.pid))
                else:
                    final = message
        text = "".join(streamed)
        assert final["type"] == "execResponse"
        assert final["timedOut"] is True
        assert len(text) > 1 * MIB  # it really did stream for seconds
        assert text == "y\n" * (len(text) // 2)  # every byte, in order, none dropped
        assert final["stdout"] == text[: len(final["stdout"])]
        assert peak - baseline < 64 * MIB, f"server grew by {(peak - baseline) / MIB:.1f} MiB"


async def test_a_stalled_reader_stalls_only_its_own_command(server: Server) -> None:
    async with (
        sandbox(server) as created,
        websocket(created["agentUrl"]) as stalled,
        websocket(created["agentUrl"]) as other,
    ):
        baseline = rss_bytes(server.pid)
        await stalled.send_message(
            json.dumps({"id": "y", "type": "spawn", "cmd": "yes", "args": ["stalled"]})
        )
        # the stalled client reads nothing for a while; everyone else carries on
        for i in range(20):
            reply = await call(other, {"id": i, "type": "exec", "cmd": "echo", "args": [str(i)]})
            assert reply["stdout"] == f"{i}\n"
            await trio.sleep(0.1)
        grown = rss_bytes(server.pid) - baseline
        assert grown < 32 * MIB, f"server grew by {grown / MIB:.1f} MiB for a stalled client"
        listed = await call(other, {"id": "p", "type": "processes"})
        (yes,) = [p for p in listed["processes"] if p["cmd"] == "yes"]
        # the producer was held back: it wrote little more than the windows in between
        assert yes["outputBytes"] < 16 * MIB
        # when the stalled client reads again, its stream resumes where it stopped
        received = ""
        with trio.fail_after(30):
            while len(received) < 4 * MIB:
                message = json.loads(await stalled.get_message())
                if message["type"] == "output":
                    received += message["data"]
        whole = len(received) - len(received) % len("stalled\n")
        assert received[:whole] == "stalled\n" * (whole // len("stalled\n"))
        await call(other, {"id": "k", "type": "signal", "pid": yes["pid"], "signal": "KILL"})
