"""Files through the stock `e2b` Python SDK behave as they do on E2B's envd (issue 29): the
cases are E2B's own SDK tests' expectations (paths answered absolute, `remove` of what is not
there, a watcher seeing an upload write the file, depth-first listings, symlinks described by
where they lead), each run with the blocking SDK and, where it is cheap, the asyncio one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from e2b import AsyncSandbox, FilesystemEvent, FilesystemEventType, FileType, Sandbox

from tests.conftest import Server

pytestmark = pytest.mark.docker

HOME = "/home/user"


@pytest.fixture
def sbx(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    sandbox = Sandbox.create(metadata={"suite": "e2b-fidelity-files"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_an_upload_answers_the_absolute_path(sbx: Sandbox) -> None:
    assert sbx.files.write("test_write.txt", "x").path == f"{HOME}/test_write.txt"
    assert sbx.files.write("~/tilde/t.txt", "t").path == f"{HOME}/tilde/t.txt"
    assert sbx.files.write("/tmp/../tmp/abs.txt", "a").path == "/tmp/../tmp/abs.txt"  # as given
    many = sbx.files.write_files(
        [{"path": "one_test_file.txt", "data": "1"}, {"path": "sub/two.txt", "data": b"2"}]
    )
    assert [w.path for w in many] == [f"{HOME}/one_test_file.txt", f"{HOME}/sub/two.txt"]
    assert sbx.files.read(many[1].path) == "2"
    assert sbx.files.read("~/tilde/t.txt") == "t"
    assert sbx.commands.run(f"cat {HOME}/tilde/t.txt /tmp/abs.txt").stdout == "ta"

    async def in_async() -> str:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        return (await sandbox.files.write("async_write.txt", "y")).path

    assert asyncio.run(in_async()) == f"{HOME}/async_write.txt"


def test_removing_what_is_not_there_succeeds(sbx: Sandbox) -> None:
    sbx.files.remove("non_existing_file.txt")
    sbx.files.remove("/tmp/no/such/dir")
    sbx.files.write("test_remove.txt", "gone soon")
    sbx.files.remove("test_remove.txt")
    assert not sbx.files.exists("test_remove.txt")

    async def in_async() -> None:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        await sandbox.files.remove("~/also_missing")

    asyncio.run(in_async())


def test_a_watcher_sees_an_upload_write_the_file_itself(sbx: Sandbox) -> None:
    # E2B's own watch test: the file exists, is watched, and is written again.
    sbx.files.make_dir("test_watch_dir")
    sbx.files.write("test_watch_dir/test_watch.txt", "This file will be watched.")
    handle = sbx.files.watch_dir("test_watch_dir")
    sbx.files.write("test_watch_dir/test_watch.txt", "This file has been modified.")
    sbx.files.write("test_watch_dir/new.txt", "new")
    wanted = {
        ("test_watch.txt", FilesystemEventType.WRITE),
        ("new.txt", FilesystemEventType.CREATE),
        ("new.txt", FilesystemEventType.WRITE),
    }
    seen: set[tuple[str, FilesystemEventType]] = set()
    deadline = time.monotonic() + 15
    while not wanted <= seen:
        assert time.monotonic() < deadline, f"saw only {seen}"
        seen |= {(e.name, e.type) for e in handle.get_new_events()}
        time.sleep(0.05)
    handle.stop()
    # only the files' own names: no temporary name is created, written or renamed
    assert {name for name, _ in seen} == {"test_watch.txt", "new.txt"}, seen

    async def streamed() -> set[tuple[str, FilesystemEventType]]:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        got: set[tuple[str, FilesystemEventType]] = set()
        written = asyncio.Event()

        def on_event(event: FilesystemEvent) -> None:
            got.add((event.name, event.type))
            if ("test_watch.txt", FilesystemEventType.WRITE) in got:
                written.set()

        watching = await sandbox.files.watch_dir(f"{HOME}/test_watch_dir", on_event=on_event)
        await sandbox.files.write("test_watch_dir/test_watch.txt", "and again")
        await asyncio.wait_for(written.wait(), 15)
        await watching.stop()  # type: ignore[no-untyped-call]
        return got

    assert {name for name, _ in asyncio.run(streamed())} == {"test_watch.txt"}


def test_a_deep_listing_is_depth_first(sbx: Sandbox) -> None:
    # E2B's own list test: each folder is followed by what is under it, names in order.
    parent = "test_directory"
    for sub in ("subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1", "subdir2/subdir2_2"):
        sbx.files.make_dir(f"{parent}/{sub}")
    sbx.files.write(f"{parent}/file1.txt", "Hello, world!")
    tree = [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
        "subdir2/subdir2_1",
        "subdir2/subdir2_2",
    ]
    for depth in (2, 3):
        listed = sbx.files.list(parent, depth=depth)
        assert [e.path for e in listed] == [f"{HOME}/{parent}/{rel}" for rel in tree]
        assert [e.name for e in listed] == [rel.rsplit("/", 1)[-1] for rel in tree]
        assert [e.type for e in listed] == [FileType.FILE] + [FileType.DIR] * 6
    shallow = sbx.files.list(parent)
    assert [e.name for e in shallow] == ["file1.txt", "subdir1", "subdir2"]

    async def in_async() -> list[str]:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        return [e.path for e in await sandbox.files.list(parent, depth=2)]

    assert asyncio.run(in_async()) == [f"{HOME}/{parent}/{rel}" for rel in tree]


def test_a_symlink_is_described_by_where_it_leads(sbx: Sandbox) -> None:
    # E2B's own symlink test: a link to a file is a file, its target the absolute path.
    test_dir = "test-simlink-entry"
    sbx.files.make_dir(test_dir)
    sbx.files.write(f"{test_dir}/test.txt", "Hello, World!")
    made = sbx.commands.run(
        "ln -s test.txt symlink_to_test.txt && ln -s .. up && ln -s chain-2 chain-1"
        " && ln -s symlink_to_test.txt chain-2 && ln -s missing.txt broken",
        cwd=f"{HOME}/{test_dir}",
    )
    assert made.exit_code == 0

    link = sbx.files.get_info(f"{test_dir}/symlink_to_test.txt")
    assert link.type == FileType.FILE
    assert link.symlink_target == f"{HOME}/{test_dir}/test.txt"
    assert link.path == f"{HOME}/{test_dir}/symlink_to_test.txt"
    assert (link.mode, link.permissions) == (0o644, "Lrwxrwxrwx")
    up = sbx.files.get_info(f"{test_dir}/up")
    assert (up.type, up.symlink_target) == (FileType.DIR, HOME)
    chain = sbx.files.get_info(f"{test_dir}/chain-1")  # followed to its end, as EvalSymlinks
    assert (chain.type, chain.symlink_target) == (FileType.FILE, f"{HOME}/{test_dir}/test.txt")
    broken = sbx.files.get_info(f"{test_dir}/broken")  # leads nowhere: its own path, no type
    assert (broken.type, broken.symlink_target) == (None, f"{HOME}/{test_dir}/broken")
    plain = sbx.files.get_info(f"{test_dir}/test.txt")
    assert (plain.type, plain.symlink_target) == (FileType.FILE, None)

    listed = {e.name: e for e in sbx.files.list(test_dir)}
    assert listed["symlink_to_test.txt"].type == FileType.FILE
    assert listed["symlink_to_test.txt"].symlink_target == f"{HOME}/{test_dir}/test.txt"
    assert (listed["up"].type, listed["up"].symlink_target) == (FileType.DIR, HOME)
    # a link to a directory is described, not entered
    assert not any(
        e.path.startswith(f"{HOME}/{test_dir}/up/") for e in sbx.files.list(test_dir, depth=2)
    )

    async def in_async() -> tuple[FileType | None, str | None]:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        info = await sandbox.files.get_info(f"{test_dir}/symlink_to_test.txt")
        return info.type, info.symlink_target

    assert asyncio.run(in_async()) == (FileType.FILE, f"{HOME}/{test_dir}/test.txt")


def test_a_new_file_written_shows_envds_three_events(sbx: Sandbox) -> None:
    # envd opens a new file, chowns it to the user, then writes it: E2B's SDK tests count
    # exactly these three events, in this order.
    sbx.files.make_dir("test_watch_three")
    handle = sbx.files.watch_dir("test_watch_three")
    sbx.files.write("test_watch_three/new.txt", "three events")
    seen: list[tuple[str, FilesystemEventType]] = []
    deadline = time.monotonic() + 15
    while len(seen) < 3:
        assert time.monotonic() < deadline, f"saw only {seen}"
        seen += [(e.name, e.type) for e in handle.get_new_events()]
        time.sleep(0.05)
    handle.stop()
    assert seen == [
        ("new.txt", FilesystemEventType.CREATE),
        ("new.txt", FilesystemEventType.CHMOD),
        ("new.txt", FilesystemEventType.WRITE),
    ]
