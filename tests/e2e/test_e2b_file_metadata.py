"""envd 0.6.2+ files through the stock `e2b` Python SDK (issue 29), as E2B's own SDK tests
use them: metadata written with a file (`X-Metadata-*` → `user.e2b.*` attributes) and read
back by `get_info`, `list`, `rename` and watch events; `include_entry` (0.6.3) and
`allow_network_mounts` (0.6.4) on `watch_dir`. Blocking and asyncio SDKs, one sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import AsyncSandbox, FilesystemEvent, FilesystemEventType, FileType, Sandbox
from e2b.exceptions import InvalidArgumentException
from e2b.sandbox.filesystem.filesystem import WriteEntry
from packaging.version import Version

from tests.conftest import Server

pytestmark = pytest.mark.docker

HOME = "/home/user"
ENVD_FILES = Version("0.6.4")
"""What the server must announce for all three features (metadata 0.6.2, entries 0.6.3,
network mounts 0.6.4); below it the SDK refuses them before asking."""


def _announced(files: object) -> None:
    """The SDK reads envd's version from the create answer: it must allow all three."""
    assert files._envd_version >= ENVD_FILES  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def sbx(server: Server) -> Iterator[Sandbox]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2B_API_URL", f"{server.url}/e2b")
        patch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
        patch.setenv("E2B_API_KEY", server.api_key)
        sandbox = Sandbox.create(metadata={"suite": "e2b-file-metadata"})
        _announced(sandbox.files)
        try:
            yield sandbox
        finally:
            sandbox.kill()


async def _connected(sbx: Sandbox) -> AsyncSandbox:
    sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
    _announced(sandbox.files)
    return sandbox


def test_metadata_is_written_and_read_back(sbx: Sandbox) -> None:
    metadata = {"author": "mish", "purpose": "upload"}
    assert sbx.files.write("test_metadata.txt", "with metadata", metadata=metadata).metadata == (
        metadata
    )
    assert sbx.files.get_info("test_metadata.txt").metadata == metadata
    octet = sbx.files.write("m_octet.txt", "x", metadata=metadata, use_octet_stream=True)
    assert octet.metadata == metadata
    assert sbx.files.get_info("m_octet.txt").metadata == metadata
    assert sbx.files.write("m_none.txt", "none").metadata is None
    assert sbx.files.get_info("m_none.txt").metadata is None
    infos = sbx.files.write_files(
        [WriteEntry(path="m_multi_1.txt", data="1"), WriteEntry(path="m/multi_2.txt", data="2")],
        metadata={"source": "test-suite"},
    )
    assert [(i.path, i.metadata) for i in infos] == [
        (f"{HOME}/m_multi_1.txt", {"source": "test-suite"}),
        (f"{HOME}/m/multi_2.txt", {"source": "test-suite"}),
    ]
    assert sbx.files.get_info("m/multi_2.txt").metadata == {"source": "test-suite"}
    # The SDK sends keys as header names: the sandbox lowercases them, as envd does.
    assert sbx.files.write("m_case.txt", "c", metadata={"Author": "A"}).metadata == {"author": "A"}


def test_metadata_shows_in_listings_and_after_rename(sbx: Sandbox) -> None:
    sbx.files.make_dir("m_list")
    sbx.files.write("m_list/listed.txt", "content", metadata={"tag": "listed"})
    sbx.files.write("m_list/plain.txt", "content")
    found = {e.name: e.metadata for e in sbx.files.list("m_list")}
    assert found == {"listed.txt": {"tag": "listed"}, "plain.txt": None}
    sbx.files.write("m_old.txt", "content", metadata={"stage": "renamed"})
    assert sbx.files.rename("m_old.txt", "m_new.txt").metadata == {"stage": "renamed"}


def test_an_overwrite_replaces_the_metadata(sbx: Sandbox) -> None:
    sbx.files.write("m_over.txt", "first", metadata={"author": "mish", "keep": "no"})
    assert sbx.files.write("m_over.txt", "2nd", metadata={"author": "b"}).metadata == {
        "author": "b"
    }
    assert sbx.files.write("m_over.txt", "third").metadata is None
    assert sbx.files.get_info("m_over.txt").metadata is None
    assert sbx.files.read("m_over.txt") == "third"


def test_attributes_set_in_the_sandbox_are_metadata(sbx: Sandbox) -> None:
    sbx.files.write("m_xattr.txt", "content")
    set_it = "import os; os.setxattr('m_xattr.txt', 'user.e2b.author', b'mish'); "
    set_it += "os.setxattr('m_xattr.txt', 'user.other', b'not e2b')"
    sbx.commands.run(f'python3 -c "{set_it}"')
    assert sbx.files.get_info("m_xattr.txt").metadata == {"author": "mish"}


def test_the_answer_says_what_the_file_kept_wherever_it_is(sbx: Sandbox) -> None:
    # /tmp and /dev/shm are tmpfs: user attributes there need Linux 6.6 (and on gVisor the
    # home's gofer mount has none): wherever it lands, the answer is what the file holds.
    for path in ("/tmp/m_tmp.txt", "/dev/shm/m_shm.txt", f"{HOME}/m_home.txt"):
        answered = sbx.files.write(path, "x", metadata={"where": "here"}).metadata
        held = sbx.commands.run(
            f"python3 -c \"import os; print([n for n in os.listxattr('{path}')])\""
        ).stdout.strip()
        assert (answered == {"where": "here"}) == ("user.e2b.where" in held), (path, held)
        assert sbx.files.get_info(path).metadata == answered


def test_invalid_metadata_is_refused_and_nothing_is_written(sbx: Sandbox, server: Server) -> None:
    for bad in ({"bad key": "v"}, {"": "v"}, {"good": "bad\nvalue"}, {"key\n": "v"}):
        with pytest.raises(InvalidArgumentException):
            sbx.files.write("m_invalid.txt", "x", metadata=bad)
    # What the SDK lets through, the sandbox checks as envd does: a key over 246 bytes,
    # more than 4096 bytes in all.
    with pytest.raises(InvalidArgumentException, match="metadata"):
        sbx.files.write("m_invalid.txt", "x", metadata={"k" * 247: "v"})
    with pytest.raises(InvalidArgumentException, match="metadata"):
        sbx.files.write("m_invalid.txt", "x", metadata={"k": "v" * 4096})
    # and a header the SDK would never send (a value that is not ASCII)
    answer = httpx.post(
        f"{server.url}/e2b/files",
        params={"path": "m_invalid.txt"},
        content=b"x",
        headers={
            b"content-type": b"application/octet-stream",
            b"e2b-sandbox-id": sbx.sandbox_id.encode(),
            b"e2b-sandbox-port": b"49983",
            b"x-access-token": (sbx._envd_access_token or "").encode(),
            b"x-metadata-k": b"caf\xe9",
        },
    )
    assert answer.status_code == 400, answer.text
    assert not sbx.files.exists("m_invalid.txt")


def _polled(
    handle: object, wanted: set[tuple[str, FilesystemEventType]]
) -> dict[tuple[str, FilesystemEventType], FilesystemEvent]:
    """The first event of each wanted (name, type), polling the blocking watcher."""
    deadline = time.monotonic() + 15
    found: dict[tuple[str, FilesystemEventType], FilesystemEvent] = {}
    while not wanted <= found.keys():
        assert time.monotonic() < deadline, f"saw only {sorted(found)}"
        for event in handle.get_new_events():  # type: ignore[attr-defined]
            found.setdefault((event.name, event.type), event)
        time.sleep(0.05)
    return found


def test_watch_events_carry_their_entry(sbx: Sandbox) -> None:
    sbx.files.make_dir("m_watch")
    sbx.files.write("m_watch/w.txt", "watched")
    handle = sbx.files.watch_dir("m_watch", include_entry=True)
    sbx.files.write("m_watch/w.txt", "modified", metadata={"seen": "yes"})
    sbx.files.remove("m_watch/w.txt")
    events = _polled(
        handle, {("w.txt", FilesystemEventType.WRITE), ("w.txt", FilesystemEventType.REMOVE)}
    )
    written = events["w.txt", FilesystemEventType.WRITE]
    assert written.entry is not None
    assert (written.entry.name, written.entry.path) == ("w.txt", f"{HOME}/m_watch/w.txt")
    assert written.entry.type == FileType.FILE
    assert events["w.txt", FilesystemEventType.REMOVE].entry is None
    handle.stop()
    plain = sbx.files.watch_dir("m_watch", allow_network_mounts=True)
    sbx.files.write("m_watch/n.txt", "x")
    seen = _polled(plain, {("n.txt", FilesystemEventType.WRITE)})
    assert seen["n.txt", FilesystemEventType.WRITE].entry is None  # not asked for
    plain.stop()


def test_watch_entries_and_metadata_in_the_async_sdk(sbx: Sandbox) -> None:
    async def run() -> FilesystemEvent:
        sandbox = await _connected(sbx)
        await sandbox.files.make_dir("m_async")
        await sandbox.files.write("m_async/a.txt", "watched")
        chmods: asyncio.Queue[FilesystemEvent] = asyncio.Queue()

        def on_event(event: FilesystemEvent) -> None:
            # The write's own chmod (envd's chown) may come before the attribute is set;
            # the one setting it carries the metadata.
            tagged = event.entry is not None and event.entry.metadata
            if event.type == FilesystemEventType.CHMOD and event.name == "a.txt" and tagged:
                chmods.put_nowait(event)

        handle = await sandbox.files.watch_dir(
            "m_async", on_event=on_event, include_entry=True, allow_network_mounts=True
        )
        info = await sandbox.files.write("m_async/a.txt", "again", metadata={"by": "async"})
        assert info.metadata == {"by": "async"}
        assert (await sandbox.files.get_info("m_async/a.txt")).metadata == {"by": "async"}
        listed = await sandbox.files.list("m_async")
        assert [(e.name, e.metadata) for e in listed] == [("a.txt", {"by": "async"})]
        # setting the attribute is a chmod event; its entry carries the metadata
        event = await asyncio.wait_for(chmods.get(), 15)
        await handle.stop()  # type: ignore[no-untyped-call]
        return event

    event = asyncio.run(run())
    assert event.entry is not None
    assert event.entry.metadata == {"by": "async"}
