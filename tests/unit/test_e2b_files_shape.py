"""envd's path resolution and entry shape, as the E2B front reproduces them (issue 29)."""

from __future__ import annotations

import pytest

from insien.api.e2b.filesystem import entry_info, permissions, sandbox_path


@pytest.mark.parametrize(
    ("asked", "resolved"),
    [
        ("test_write.txt", "/home/user/test_write.txt"),
        ("a/../b/./c.txt", "/home/user/b/c.txt"),
        ("", "/home/user"),
        ("~", "/home/user"),
        ("~/x/../y", "/home/user/y"),
        ("/tmp/../etc", "/tmp/../etc"),  # an absolute path is taken as given, as envd does
        ("~root/x", None),
    ],
)
def test_paths_resolve_as_envd_resolves_them(asked: str, resolved: str | None) -> None:
    assert sandbox_path(asked) == resolved


@pytest.mark.parametrize(
    ("kind", "mode", "text"),
    [
        ("file", 0o644, "-rw-r--r--"),
        ("dir", 0o755, "drwxr-xr-x"),
        ("symlink", 0o777, "Lrwxrwxrwx"),
        ("dir", 0o1777, "dtrwxrwxrwx"),
        ("file", 0o4755, "urwxr-xr-x"),
        ("char", 0o666, "Dcrw-rw-rw-"),
        ("fifo", 0o600, "prw-------"),
    ],
)
def test_permissions_are_written_as_go_writes_them(kind: str, mode: int, text: str) -> None:
    assert permissions(kind, mode) == text


def test_a_symlink_entry_is_its_target() -> None:
    link = {"name": "l", "path": "/home/user/l", "type": "symlink", "size": 3, "mode": 0o777}
    leads = entry_info(
        {**link, "target": "t", "resolved": {"path": "/t", "type": "dir", "mode": 0o1755}}
    )
    assert (leads["type"], leads["mode"], leads["symlinkTarget"]) == (
        "FILE_TYPE_DIRECTORY",
        0o755,
        "/t",
    )
    assert leads["permissions"] == "Lrwxrwxrwx"
    assert "isSymlink" not in leads  # envd 0.6.1 has no such field: SDKs would say SYMLINK
    nowhere = entry_info({**link, "target": "gone"})
    assert (nowhere["type"], nowhere["mode"]) == ("FILE_TYPE_UNSPECIFIED", 0)
    assert nowhere["symlinkTarget"] == "/home/user/l"
