"""Snapshot and pause manifests (issue 32): what the agent records of a filesystem
(agent/insien_agent/manifest.py), and how the server compares two and names what differs
(insien.sandboxes.snapshots.Manifest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from insien.runtime.base import RuntimeFailure
from insien.sandboxes.snapshots import Manifest, ManifestMismatch
from insien_agent import manifest


def answer_for(root: Path, uid: int | None = None, home: str | None = None) -> Manifest:
    return Manifest.from_answer(
        {"type": "manifestResponse", **manifest.build(uid, home, str(root))}
    )


def tree(root: Path) -> None:
    (root / "home" / "user" / "project").mkdir(parents=True)
    (root / "home" / "user" / "project" / "a.txt").write_bytes(b"alpha")
    (root / "home" / "user" / "empty").write_bytes(b"")
    (root / "home" / "user" / "link").symlink_to("project/a.txt")
    (root / "etc").mkdir()
    (root / "etc" / "system.conf").write_bytes(b"system")
    os.mkfifo(root / "home" / "user" / "pipe")


def test_files_get_sizes_and_digests_and_links_their_targets(tmp_path: Path) -> None:
    tree(tmp_path)
    found = answer_for(tmp_path)
    user = str(tmp_path / "home" / "user")
    assert found.complete
    assert found.entries[f"{user}/project/a.txt"] == (
        "f",
        5,
        hashlib.sha256(b"alpha").hexdigest(),
    )
    assert found.entries[f"{user}/empty"] == ("f", 0, hashlib.sha256(b"").hexdigest())
    assert found.entries[f"{user}/link"] == ("l", 0, "project/a.txt")
    assert found.entries[f"{user}/project"] == ("d", 0, None)
    assert found.entries[f"{user}/pipe"] == ("o", 0, None)  # listed, never opened


def test_only_what_the_user_could_write_is_recorded(tmp_path: Path) -> None:
    tree(tmp_path)
    someone_else = os.getuid() + 1
    found = answer_for(tmp_path, someone_else, str(tmp_path / "home" / "user"))
    assert str(tmp_path / "home" / "user" / "project" / "a.txt") in found.entries
    assert str(tmp_path / "etc" / "system.conf") not in found.entries  # not theirs, not home
    assert str(tmp_path / "etc" / "system.conf") in answer_for(tmp_path).entries


def test_past_the_hash_budget_files_keep_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(tmp_path)
    monkeypatch.setattr(manifest, "HASH_BUDGET", 5)
    hashed = [entry for entry in answer_for(tmp_path).entries.values() if entry[0] == "f"]
    assert sorted((size, digest is not None) for _, size, digest in hashed) == [
        (0, True),
        (5, True),
        (6, False),
    ]


def test_at_the_entry_limit_the_manifest_says_it_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(tmp_path)
    monkeypatch.setattr(manifest, "MAX_ENTRIES", 3)
    found = answer_for(tmp_path)
    assert len(found.entries) == 3
    assert not found.complete


def test_every_difference_is_named(tmp_path: Path) -> None:
    tree(tmp_path)
    before = answer_for(tmp_path)
    user = tmp_path / "home" / "user"
    (user / "project" / "a.txt").write_bytes(b"alphA")  # same size, other bytes
    (user / "empty").write_bytes(b"grown")
    (user / "link").unlink()
    (user / "link").symlink_to("elsewhere")
    (user / "pipe").unlink()
    (user / "pipe").mkdir()
    (user / "new.txt").write_bytes(b"extra files are no loss")
    after = answer_for(tmp_path)
    assert before.differences(after) == [
        f"{user}/empty: 0 bytes, now 5",
        f"{user}/link: a symlink to 'project/a.txt', now to 'elsewhere'",
        f"{user}/pipe: was a special file, is a directory",
        f"{user}/project/a.txt: content differs (SHA-256 "
        f"{hashlib.sha256(b'alpha').hexdigest()[:12]}…, now "
        f"{hashlib.sha256(b'alphA').hexdigest()[:12]}…)",
    ]
    (user / "project" / "a.txt").unlink()
    with pytest.raises(ManifestMismatch, match=r"project/a.txt: missing") as raised:
        before.check(answer_for(tmp_path), "the test")
    assert raised.value.args[0].startswith("the test: 4 paths differ from the manifest")
    before.check(before, "the same")  # no difference, no error


def test_a_manifest_taken_twice_keeps_only_what_stood_still(tmp_path: Path) -> None:
    tree(tmp_path)
    first = answer_for(tmp_path)
    (tmp_path / "home" / "user" / "empty").write_bytes(b"moving")
    (tmp_path / "home" / "user" / "new").write_bytes(b"")
    settled, moving = first.settled(answer_for(tmp_path))
    user = str(tmp_path / "home" / "user")
    assert moving == [f"{user}/empty", f"{user}/new"]
    assert f"{user}/project/a.txt" in settled.entries
    assert not set(moving) & settled.entries.keys()


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "error", "code": "INTERNAL", "message": "boom"},
        {"type": "manifestResponse", "entries": [["/a", "f", "5", None]], "complete": True},
        {"type": "manifestResponse", "entries": [["/a", "x", 5, None]], "complete": True},
        {"type": "manifestResponse", "entries": [["/a", "f", -1, None]], "complete": True},
        {"type": "manifestResponse", "entries": [["/a", "f", 5]], "complete": True},
        {"type": "somethingElse"},
    ],
)
def test_an_agents_bad_answer_is_a_runtime_failure(answer: dict[str, object]) -> None:
    with pytest.raises(RuntimeFailure):
        Manifest.from_answer(answer)
