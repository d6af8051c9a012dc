"""The agent's `watch`: real inotify on a real directory, events in batches as credit allows,
and a storm of events bounded by dropping (and counting) instead of growing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from tests.agent_process import AgentProcess, run_agent


async def _events_until(
    agent: AgentProcess, wanted: set[tuple[str, str]], timeout: float = 10
) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    with trio.fail_after(timeout):
        while not wanted <= seen:
            message = await agent.receive()
            assert message["type"] == "fsEvents", message
            seen |= {(e["name"], e["op"]) for e in message["events"]}
            await agent.send({"id": "c", "type": "credit", "target": "w", "n": 1})
    return seen


async def test_watch_reports_changes_and_ends_on_cancel(tmp_path: Path) -> None:
    (tmp_path / "w" / "sub").mkdir(parents=True)
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": "w", "type": "watch", "path": "w"})
        started = await agent.receive()
        assert started == {
            "id": "w",
            "type": "watchStarted",
            "path": "w",
            "root": str(tmp_path / "w"),
        }
        (tmp_path / "w" / "a.txt").write_text("one")
        os.chmod(tmp_path / "w" / "a.txt", 0o600)
        (tmp_path / "w" / "a.txt").rename(tmp_path / "w" / "b.txt")
        (tmp_path / "w" / "b.txt").unlink()
        (tmp_path / "w" / "sub" / "deep.txt").write_text("not watched: not recursive")
        seen = await _events_until(
            agent,
            {
                ("a.txt", "create"),
                ("a.txt", "write"),
                ("a.txt", "chmod"),
                ("a.txt", "rename"),
                ("b.txt", "create"),
                ("b.txt", "remove"),
            },
        )
        assert not any(name.startswith("sub/") for name, _ in seen)
        await agent.send({"id": "x", "type": "cancel", "target": "w"})
        replies = await agent.receive_many(2)
        assert replies["w"]["code"] == "CANCELLED"


async def test_recursive_watch_follows_new_directories(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": "w", "type": "watch", "path": ".", "recursive": True})
        assert (await agent.receive())["type"] == "watchStarted"
        (tmp_path / "new").mkdir()
        # The agent adds a watch for the new directory a moment after its `create`: files made
        # before that are not seen, so keep making them until one is.
        seen: set[str] = set()
        with trio.fail_after(15):
            for n in range(1000):
                (tmp_path / "new" / f"inner{n}.txt").write_text("x")
                message: dict[str, Any] | None = None
                with trio.move_on_after(0.2):  # a cancelled read loses nothing; a write could
                    message = await agent.receive()
                if message is not None:
                    await agent.send({"id": "c", "type": "credit", "target": "w", "n": 1})
                    seen |= {e["name"] for e in message["events"] if e["op"] == "create"}
                if "new" in seen and any(name.startswith("new/inner") for name in seen):
                    break


async def test_removing_the_directory_ends_the_watch(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": "w", "type": "watch", "path": "gone"})
        assert (await agent.receive())["type"] == "watchStarted"
        (tmp_path / "gone").rmdir()
        final: dict[str, Any] = {}
        with trio.fail_after(10):
            while final.get("type") != "watchEnded":
                final = await agent.receive()
                await agent.send({"id": "c", "type": "credit", "target": "w", "n": 1})
        assert final["reason"] == "the watched directory was removed"


async def test_bad_watches_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": 1, "type": "watch", "path": "missing"})
        assert (await agent.receive())["code"] == "NOT_FOUND"
        await agent.send({"id": 2, "type": "watch", "path": "file"})
        assert (await agent.receive())["code"] == "NOT_A_DIRECTORY"


async def test_a_storm_without_credit_is_dropped_and_counted(tmp_path: Path) -> None:
    storm = tmp_path / "storm"
    storm.mkdir()
    async with run_agent(tmp_path, INSIEN_AGENT_WINDOW="1") as agent:
        await agent.send({"id": "w", "type": "watch", "path": "storm"})
        assert (await agent.receive())["type"] == "watchStarted"
        for n in range(6000):  # more events than the agent keeps waiting (4096)
            (storm / f"f{n}").touch()
        await trio.sleep(0.5)
        delivered = 0
        dropped = 0
        with trio.fail_after(20):
            while delivered + dropped < 6000:
                batch = await agent.receive()
                assert batch["type"] == "fsEvents"
                assert len(batch["events"]) <= 256
                creates = [e for e in batch["events"] if e["op"] == "create"]
                delivered += len(creates)
                dropped += batch.get("dropped", 0)
                await agent.send({"id": "c", "type": "credit", "target": "w", "n": 1})
        assert dropped > 0
        assert delivered <= 4096 + 256
