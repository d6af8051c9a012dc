"""The agent's `list` walk: depth-first pre-order as envd's `filepath.WalkDir`, its cap, and
symlinks described with where they lead (issue 29)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from insien_agent import files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for sub in ("a/a1/deep", "a/a2", "b/b1"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "file.txt").write_text("f")
    return tmp_path


def relative(root: Path, entries: list[files.Message]) -> list[str]:
    return [os.path.relpath(e["path"], root) for e in entries]


def test_a_deep_listing_is_depth_first(tree: Path) -> None:
    entries, truncated = files._list(str(tree), 2)
    assert relative(tree, entries) == ["a", "a/a1", "a/a2", "b", "b/b1", "file.txt"]
    assert truncated is False
    shallow, _ = files._list(str(tree), 1)
    assert relative(tree, shallow) == ["a", "b", "file.txt"]


def test_the_cap_cuts_the_walk_and_says_so(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_LIST_ENTRIES", 4)
    entries, truncated = files._list(str(tree), 3)
    assert (relative(tree, entries), truncated) == (["a", "a/a1", "a/a1/deep", "a/a2"], True)
    monkeypatch.setattr(files, "MAX_LIST_ENTRIES", 7)  # exactly everything: not cut
    entries, truncated = files._list(str(tree), 3)
    assert (len(entries), truncated) == (7, False)


def test_symlinks_are_described_with_where_they_lead(tree: Path) -> None:
    (tree / "b" / "to-file").symlink_to("../file.txt")
    (tree / "b" / "to-dir").symlink_to("../a")
    (tree / "b" / "broken").symlink_to("nowhere")
    entries, _ = files._list(str(tree / "b"), 2)
    by_name = {e["name"]: e for e in entries}
    assert list(by_name) == ["b1", "broken", "to-dir", "to-file"]  # to-dir is not entered
    assert by_name["to-file"]["target"] == "../file.txt"
    assert by_name["to-file"]["resolved"]["path"] == str(tree / "file.txt")
    assert by_name["to-file"]["resolved"]["type"] == "file"
    assert by_name["to-dir"]["resolved"]["type"] == "dir"
    assert "resolved" not in by_name["broken"]
    # a symlinked root is followed, as envd follows it
    followed, _ = files._list(str(tree / "b" / "to-dir"), 1)
    assert [e["name"] for e in followed] == ["a1", "a2"]
