"""After a fork bomb's `exec` has its answer, the next command starts at once instead of
failing with "Resource temporarily unavailable" while what is left of the bomb fills the pids
limit (issue 27): whether the exec ended by its timeout, a cancel, its client's disconnect, or
because its shell exited and left the bomb running in its process group. Only the last failed
on the old code (3 runs in 3); the others guard the end of a command's whole tree."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from tests.conftest import Server
from tests.e2e.helpers import call, receive, sandbox, websocket

BOMB = "b(){ b|b& }; b"
"""Its shell exits at once: the bomb outlives it in its process group, holding its output, and
was seen to live on for 80 s."""
STORM = "b(){ while :; do b|b& done; }; b >/dev/null 2>&1 & while :; do :; done"
"""The same bomb with every member forking again and again: it never dies out by itself (the
one above often does). Its shell spins without forking, so it never ends (a shell whose fork
fails may exit): only its timeout, or a cancel, ends the command."""
ROUNDS = 2
"""Bombs per scenario (the one that outlives its shell gets two more: it may die out early)."""
ECHOES = 20
GROWN = 100
"""Processes in the sandbox that show the bomb is big enough to fill the pids limit soon."""


def bomb(request_id: str, script: str = STORM, timeout: float | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": request_id,
        "type": "exec",
        "cmd": "sh",
        "args": ["-c", script],
    }
    if timeout is not None:
        message["timeout"] = timeout
    return message


async def echoes_answer_at_once(ws: WebSocketConnection) -> None:
    """`echo ok`, ECHOES times in a row, each succeeding on the first try."""
    for n in range(ECHOES):
        reply = await call(ws, {"id": f"e{n}", "type": "exec", "cmd": "echo", "args": ["ok"]})
        assert reply.get("stdout") == "ok\n", f"echo {n} after the bomb: {reply}"


async def running(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """The agent's processes (a request that starts none)."""
    listing = await call(ws, {"id": "ps", "type": "processes"})
    processes: list[dict[str, Any]] = listing["processes"]
    return processes


async def until_grown(ws: WebSocketConnection, bomb_id: str) -> None:
    """Until the bomb has grown (counted through the file API, which starts no process); its
    exec must not have been answered meanwhile."""
    seen: list[int] = []
    with trio.move_on_after(30):
        for n in count():
            await ws.send_message(json.dumps({"id": f"ls{n}", "type": "list", "path": "/proc"}))
            while (reply := json.loads(await ws.get_message())).get("id") != f"ls{n}":
                assert reply.get("id") != bomb_id, f"the bomb's exec ended by itself: {reply}"
            entries = reply.get("entries", [])
            seen.append(sum(entry["name"].isdigit() for entry in entries))
            if seen[-1] >= GROWN:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"the bomb did not grow: processes seen {seen}")


async def test_the_command_after_a_timed_out_fork_bomb_starts(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for round_ in range(ROUNDS):
            started = trio.current_time()
            reply = await call(ws, bomb(f"b{round_}", timeout=3), timeout=60)
            assert reply["type"] == "execResponse", reply
            assert reply["timedOut"] is True, reply
            assert trio.current_time() - started < 20, "ending the bomb took too long"
            await echoes_answer_at_once(ws)


async def test_the_command_after_a_fork_bomb_that_outlived_its_shell_starts(
    server: Server,
) -> None:
    # The shell exits at once, its timeout never passes; the bomb it left fills the pids
    # limit (seen living on for 80 s): it is ended before the exec's answer.
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for round_ in range(ROUNDS + 2):
            reply = await call(ws, bomb(f"b{round_}", BOMB, timeout=3), timeout=60)
            assert reply["type"] == "execResponse", reply
            await echoes_answer_at_once(ws)


async def test_the_command_after_a_cancelled_fork_bomb_starts(server: Server) -> None:
    async with sandbox(server) as created, websocket(created["agentUrl"]) as ws:
        for round_ in range(ROUNDS):
            await ws.send_message(json.dumps(bomb(f"b{round_}")))
            await until_grown(ws, f"b{round_}")
            cancel = {"id": f"c{round_}", "type": "cancel", "target": f"b{round_}"}
            cancelled = await call(ws, cancel)
            assert cancelled["cancelled"] is True, cancelled
            reply = await receive(ws, timeout=60)
            assert reply["id"] == f"b{round_}", reply
            assert reply["type"] == "error", reply
            assert reply["code"] == "CANCELLED", reply
            await echoes_answer_at_once(ws)


async def test_the_command_after_a_fork_bomb_whose_client_left_starts(server: Server) -> None:
    async with sandbox(server) as created:
        for round_ in range(ROUNDS):
            async with websocket(created["agentUrl"]) as ws:
                await ws.send_message(json.dumps(bomb(f"b{round_}")))
                await until_grown(ws, f"b{round_}")
            # The client went away with its exec running: the server cancels it in the agent
            # (some time after: a new connection's command may come first, and meet the bomb).
            # Once it has ended, the next command must not meet what is left of it.
            async with websocket(created["agentUrl"]) as ws:
                with trio.fail_after(30):
                    while any(p["running"] for p in await running(ws)):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                await echoes_answer_at_once(ws)
                # and the bomb was ended, not left to die out by itself
                ps = await call(ws, {"id": "ps", "type": "exec", "cmd": "ps", "args": ["-e"]})
                assert ps["stdout"].count("\n") < 10, json.dumps(ps)
