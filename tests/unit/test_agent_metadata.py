"""File metadata as envd 0.6.2+ keeps it (`user.e2b.*` extended attributes, issue 29): what a
`write` with `metadata` accepts and leaves on the file, what entries read back, and envd
0.6.3/0.6.4's watch options (entries on events, network filesystems refused unless allowed)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from insien_agent import files, metadata, watch
from insien_agent.errors import AgentError
from tests.agent_process import run_agent


def test_envd_limits_are_checked_before_anything_is_written() -> None:
    assert metadata.validated(None) is None
    assert metadata.validated({"author": "mish", "empty": ""}) == {"author": "mish", "empty": ""}
    longest = "k" * metadata.MAX_KEY_BYTES
    assert metadata.validated({longest: "v"}) == {longest: "v"}
    for bad in (
        {"": "v"},
        {"key\n": "v"},
        {"k": "v\n"},
        {"k": "é"},
        {longest + "k": "v"},
        {"k": "v" * metadata.MAX_TOTAL_BYTES},
        {"k": 1},
        ["k"],
    ):
        with pytest.raises(AgentError) as refused:
            metadata.validated(bad)
        assert refused.value.code == "BAD_REQUEST", bad


def test_a_write_replaces_the_set_and_leaves_other_attributes(tmp_path: Path) -> None:
    path = str(tmp_path / "f.txt")
    first = files._write(path, b"one", append=False, mode=None, tags={"a": "1", "b": "2"})
    assert first == {"metadata": {"a": "1", "b": "2"}}
    os.setxattr(path, "user.other", b"kept")  # not ours: an upload never touches it
    second = files._write(path, b"two", append=False, mode=None, tags={"b": "3"})
    assert second == {"metadata": {"b": "3"}}
    assert (tmp_path / "f.txt").read_bytes() == b"two"
    assert files._write(path, b"", append=False, mode=None, tags={}) == {"metadata": {}}
    assert os.listxattr(path) == ["user.other"]
    # a write without `metadata` leaves the set as it is, and says nothing of it
    files._write(path, b"", append=False, mode=None, tags={"c": "4"})
    assert files._write(path, b"more", append=True, mode=None) == {}
    assert metadata.read(path) == {"c": "4"}


def test_entries_carry_metadata_set_in_any_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    tagged = tmp_path / "d" / "tagged.txt"
    tagged.write_text("x")
    os.setxattr(tagged, "user.e2b.author", b"mish")  # as `setfattr` in the sandbox would
    os.setxattr(tagged, "user.e2b.binary", b"\xff\xfe")  # not UTF-8: left out, as envd does
    os.setxattr(tagged, "user.plain", b"not ours")
    (tmp_path / "d" / "plain.txt").write_text("y")
    (tmp_path / "d" / "link").symlink_to(tagged)
    (tmp_path / "d" / "dangling").symlink_to(tmp_path / "nowhere")
    entries, _ = files._list(str(tmp_path / "d"), 1)
    found = {e["name"]: e.get("metadata") for e in entries}
    assert found == {
        "dangling": None,
        "link": {"author": "mish"},  # a link's is its target's, as envd reads it
        "plain.txt": None,
        "tagged.txt": {"author": "mish"},
    }
    assert files.describe(str(tagged))["metadata"] == {"author": "mish"}

    # past envd's budget (tmpfs could hold more than ext4's block): the rest is left out
    os.setxattr(tagged, "user.e2b.big", b"b" * 20)
    assert metadata.read(str(tagged)) == {"author": "mish", "big": "b" * 20}
    monkeypatch.setattr(metadata, "MAX_TOTAL_BYTES", 40)  # "user.e2b.author" + "mish" fit
    assert metadata.read(str(tagged)) == {"author": "mish"}
    assert "metadata" not in files.describe(str(tmp_path / "d" / "plain.txt"))


def test_a_filesystem_without_user_attributes_keeps_the_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (gVisor's gofer mounts answer EOPNOTSUPP, as this does.)
    def unsupported(*_args: Any) -> Any:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "listxattr", unsupported)
    path = str(tmp_path / "f.txt")
    answer = files._write(path, b"kept", append=False, mode=None, tags={"a": "1"})
    assert answer == {"metadata": {}, "metadataUnsupported": True}
    assert (tmp_path / "f.txt").read_bytes() == b"kept"
    assert "metadata" not in files.describe(path)


def test_watch_events_carry_entries_only_where_envd_gives_them(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    os.setxattr(tmp_path / "here.txt", "user.e2b.k", b"v")
    events: list[dict[str, Any]] = [
        {"name": "here.txt", "op": "write"},
        {"name": "here.txt", "op": "chmod"},
        {"name": "here.txt", "op": "rename"},
        {"name": "gone.txt", "op": "create"},
        {"name": "gone.txt", "op": "remove"},
    ]
    watch.with_entries(str(tmp_path), events)
    carried = [(e["name"], e["op"], "entry" in e) for e in events]
    assert carried == [
        ("here.txt", "write", True),
        ("here.txt", "chmod", True),
        ("here.txt", "rename", False),
        ("gone.txt", "create", False),
        ("gone.txt", "remove", False),
    ]
    assert events[0]["entry"]["path"] == str(tmp_path / "here.txt")
    assert events[0]["entry"]["metadata"] == {"k": "v"}


def test_network_filesystems_are_told_apart_by_statfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = subprocess.run(
        ["stat", "-f", "--format=%t", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert watch.filesystem_type(str(tmp_path)) == int(told.stdout.strip(), 16)
    watch.refuse_network_mount(str(tmp_path))  # a local disk: watched
    monkeypatch.setattr(watch, "filesystem_type", lambda _path: 0x6969)
    with pytest.raises(AgentError, match=r"network filesystem \(NFS\)") as refused:
        watch.refuse_network_mount(str(tmp_path))
    assert refused.value.code == "BAD_REQUEST"


async def test_the_agent_answers_metadata_and_entries(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    async with run_agent(tmp_path) as agent:
        await agent.send(
            {
                "id": "w",
                "type": "watch",
                "path": "w",
                "includeEntry": True,
                "allowNetworkMounts": False,
            }
        )
        assert (await agent.receive())["type"] == "watchStarted"
        await agent.send(
            {
                "id": 1,
                "type": "write",
                "path": "w/a.txt",
                "content": "hi",
                "metadata": {"author": "mish"},
            }
        )
        entries: dict[str, Any] = {}
        with trio.fail_after(10):
            while True:
                message = await agent.receive()
                if message["type"] == "writeResponse":
                    assert message["metadata"] == {"author": "mish"}
                    continue
                assert message["type"] == "fsEvents", message
                for event in message["events"]:
                    entries[event["op"]] = event.get("entry")  # each op's latest
                await agent.send({"id": "c", "type": "credit", "target": "w", "n": 1})
                # A chmod comes as the file is made (envd's chown) and another as the
                # attribute is set, the last change: the entry read then has it.
                done = {"create", "write"} <= entries.keys()
                if done and (entries.get("chmod") or {}).get("metadata"):
                    break
        for op in ("create", "write", "chmod"):
            assert entries[op]["path"] == str(tmp_path / "w" / "a.txt"), op
        assert entries["chmod"]["metadata"] == {"author": "mish"}

        async def answer(request_id: int) -> dict[str, Any]:
            """The request's answer, past events the watch still sends."""
            while (message := await agent.receive())["id"] != request_id:
                if message["type"] == "writeResponse":  # the first write's, after its events
                    assert message["metadata"] == {"author": "mish"}
                else:
                    assert message["type"] == "fsEvents", message
            return message

        await agent.send({"id": 2, "type": "stat", "path": "w/a.txt"})
        assert (await answer(2))["entry"]["metadata"] == {"author": "mish"}
        await agent.send(
            {"id": 3, "type": "write", "path": "w/b.txt", "content": "", "metadata": {"": "x"}}
        )
        refused = await answer(3)
        assert refused["code"] == "BAD_REQUEST"
        assert not (tmp_path / "w" / "b.txt").exists()  # refused before anything was written
        await agent.send({"id": "x", "type": "cancel", "target": "w"})
        await agent.receive_many(1)
