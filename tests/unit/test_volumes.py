"""Volumes' pure parts (issue 32), no Docker: names, mount paths and file paths are checked;
the volume job walks paths without following symlinks, keeps to the size limit and writes
whole files; an upload's spool is a valid one-file tar; the seal is bound to the volume."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from insien.config import Settings
from insien.sandboxes import volume_job
from insien.sandboxes.errors import NotSupported
from insien.sandboxes.provenance import Sealer
from insien.sandboxes.volume_job import Refused
from insien.sandboxes.volumes import (
    INBOX_MEMBER,
    BadVolume,
    MountRequest,
    Spool,
    VolumeCorrupt,
    Volumes,
    _stream_member,
    checked_mounts,
    file_path,
    mount_path,
    volume_name,
)
from insien.tenancy.tenants import Tenant, load_tenants_file
from insien_sandbox import AsyncVolume, IntegrityError
from tests.fake_runtime import FakeRuntime


@pytest.mark.parametrize("name", ["data", "A1", "a.b_c-d", "x" * 63])
def test_volume_names_accepted(name: str) -> None:
    assert volume_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a/b", "..", "a b", "x" * 64, "é", 3, None])
def test_volume_names_refused(name: object) -> None:
    with pytest.raises(BadVolume):
        volume_name(name)


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/data", "/data"),
        ("/data/", "/data"),
        ("//data//set", "/data/set"),
        ("/home/user", "/home/user"),
        ("/home/user/work", "/home/user/work"),
        ("/var/lib/cache", "/var/lib/cache"),
        ("/opt/insienx", "/opt/insienx"),
        ("/optional", "/optional"),
        ("/library", "/library"),
    ],
)
def test_mount_paths_accepted(path: str, normal: str) -> None:
    assert mount_path(path) == normal


@pytest.mark.parametrize(
    "path",
    [
        "",
        "data",
        "/",
        "//",
        "/opt",
        "/opt/",
        "/opt/insien",
        "/opt/insien/sub",
        "/proc",
        "/proc/1",
        "/sys",
        "/dev",
        "/dev/shm",
        "/etc",
        "/usr",
        "/usr/local/bin",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/tmp",
        "/tmp/work",
        "/run",
        "/var/run",
        "/boot",
        "/data/../etc",
        "/data/./x",
        "/da\x00ta",
        "/" + "x" * 1100,
        None,
    ],
)
def test_mount_paths_refused(path: object) -> None:
    with pytest.raises(BadVolume):
        mount_path(path)


def test_mounts_are_checked_together() -> None:
    checked = checked_mounts([MountRequest("a", "/data/"), MountRequest("a", "/more", True)])
    assert checked == [MountRequest("a", "/data"), MountRequest("a", "/more", True)]
    with pytest.raises(BadVolume, match="two volumes"):
        checked_mounts([MountRequest("a", "/data"), MountRequest("b", "/data/")])
    with pytest.raises(BadVolume, match="at most"):
        checked_mounts([MountRequest("a", f"/d{i}") for i in range(17)])
    with pytest.raises(BadVolume):
        checked_mounts([MountRequest("../a", "/data")])


@pytest.mark.parametrize("path", ["", None, "../x", "a/../../b", "a/..", "a\x00b"])
def test_file_paths_refused(path: str | None) -> None:
    with pytest.raises(BadVolume):
        file_path(path)


# -- the volume job, on a folder of this machine ------------------------------------------------


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "volume"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("outside")
    fd = os.open(root, volume_job.DIR_FLAGS)
    try:
        yield fd, root
    finally:
        os.close(fd)


def inbox(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "inbox"
    path.write_bytes(data)
    return str(path)


def test_write_read_list_remove(volume: tuple[int, Path], tmp_path: Path) -> None:
    fd, root = volume
    data = os.urandom(3 * volume_job.CHUNK + 5)
    written = volume_job.write_file(fd, "/a/b/file", 1 << 30, inbox(tmp_path, data))
    assert written == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (root / "a" / "b" / "file").read_bytes() == data
    assert not [p for p in (root / "a" / "b").iterdir() if p.name.startswith(".insien")]
    outbox = tmp_path / "out" / "data"
    assert volume_job.read_file(fd, "a/b/file", str(outbox)) == written
    assert outbox.read_bytes() == data
    listed = volume_job.list_folder(fd, "a")
    assert [(e["name"], e["type"]) for e in listed["entries"]] == [("b", "dir")]
    assert volume_job.usage(fd) == len(data) + sum(
        os.lstat(p).st_size for p in (root / "a", root / "a" / "b")
    )
    volume_job.remove(fd, "a")
    assert list(root.iterdir()) == []
    with pytest.raises(Refused) as raised:
        volume_job.read_file(fd, "a/b/file", str(outbox))
    assert raised.value.code == "NOT_FOUND"


def test_the_limit_counts_what_a_write_replaces(volume: tuple[int, Path], tmp_path: Path) -> None:
    fd, root = volume
    limit = volume_job.usage(fd) + 1000
    volume_job.write_file(fd, "f", limit, inbox(tmp_path, bytes(900)))
    with pytest.raises(Refused) as raised:
        volume_job.write_file(fd, "g", limit, inbox(tmp_path, bytes(200)))
    assert raised.value.code == "NO_SPACE"
    assert not (root / "g").exists()
    volume_job.write_file(fd, "f", limit, inbox(tmp_path, bytes(1000)))
    assert (root / "f").stat().st_size == 1000


def test_a_write_that_is_not_what_the_server_received_leaves_the_old_file(
    volume: tuple[int, Path], tmp_path: Path
) -> None:
    fd, root = volume
    volume_job.write_file(fd, "f", 1 << 20, inbox(tmp_path, b"old"))
    sent = hashlib.sha256(b"new").hexdigest()
    # What reached the job's inbox differs from what the server received (sent).
    with pytest.raises(Refused) as raised:
        volume_job.write_file(fd, "f", 1 << 20, inbox(tmp_path, b"nex"), expected=sent)
    assert raised.value.code == "CORRUPT"
    assert (root / "f").read_bytes() == b"old"
    assert [p.name for p in root.iterdir()] == ["f"]  # no temporary left
    written = volume_job.write_file(fd, "f", 1 << 20, inbox(tmp_path, b"new"), expected=sent)
    assert written == {"size": 3, "sha256": sent}


async def test_a_download_that_is_not_what_the_job_read_ends_broken() -> None:
    data = os.urandom(3 << 20)

    def archive() -> IO[bytes]:
        made = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the stream)
        with tarfile.open(fileobj=made, mode="w") as tar:
            info = tarfile.TarInfo("data")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        made.seek(0)
        return made

    right = hashlib.sha256(data).hexdigest()
    got = b"".join([chunk async for chunk in _stream_member(archive(), len(data), right)])
    assert got == data
    received: list[bytes] = []

    async def download() -> None:
        async for chunk in _stream_member(archive(), len(data), "0" * 64):
            received.append(chunk)

    with pytest.raises(VolumeCorrupt):
        await download()
    # The last piece is held back: never a whole wrong file.
    assert len(b"".join(received)) < len(data)


async def test_the_spool_hashes_what_it_receives() -> None:
    spool = Spool()
    await spool.write(b"abc")
    await spool.write(b"def")
    assert spool.digest.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    spool.close()


def test_symlinks_are_never_followed(volume: tuple[int, Path], tmp_path: Path) -> None:
    fd, root = volume
    outside = tmp_path / "outside"
    (root / "dir").symlink_to(outside)
    (root / "file").symlink_to(outside / "secret")
    (root / "rel").symlink_to("../outside")
    outbox = str(tmp_path / "out" / "data")
    for path in ("dir/secret", "rel/secret", "file"):
        with pytest.raises(Refused) as raised:
            volume_job.read_file(fd, path, outbox)
        assert raised.value.code == "SYMLINK", path
    for path in ("dir/planted", "rel/x/planted"):
        with pytest.raises(Refused) as raised:
            volume_job.write_file(fd, path, 1 << 30, inbox(tmp_path, b"x"))
        assert raised.value.code == "SYMLINK", path
    for path in ("dir", "rel"):
        with pytest.raises(Refused):
            volume_job.list_folder(fd, path)
    with pytest.raises(Refused):
        volume_job.remove(fd, "dir/secret")
    with pytest.raises(Refused):
        volume_job.make_folder(fd, "dir/new")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]

    # A folder holding a symlink is removed without touching what the link points to.
    (root / "tree").mkdir()
    (root / "tree" / "out").symlink_to(outside)
    volume_job.remove(fd, "tree")
    assert (outside / "secret").read_text() == "outside"
    # Writing over a symlink replaces the link, never its target.
    volume_job.write_file(fd, "file", 1 << 30, inbox(tmp_path, b"mine"))
    assert not (root / "file").is_symlink()
    assert (outside / "secret").read_text() == "outside"
    # Removing a symlink removes the link only.
    volume_job.remove(fd, "dir")
    assert (outside / "secret").exists()


def test_a_fifo_is_refused_without_hanging(volume: tuple[int, Path], tmp_path: Path) -> None:
    fd, root = volume
    os.mkfifo(root / "pipe")
    with pytest.raises(Refused) as raised:
        volume_job.read_file(fd, "pipe", str(tmp_path / "out"))
    assert raised.value.code == "BAD_REQUEST"


def test_the_root_cannot_be_read_written_or_removed(
    volume: tuple[int, Path], tmp_path: Path
) -> None:
    fd, _ = volume
    with pytest.raises(Refused):
        volume_job.read_file(fd, "/", str(tmp_path / "out"))
    with pytest.raises(Refused):
        volume_job.write_file(fd, "/", 1 << 30, inbox(tmp_path, b"x"))
    with pytest.raises(Refused):
        volume_job.remove(fd, ".")
    with pytest.raises(Refused) as raised:
        volume_job.parts("a/../b")
    assert raised.value.code == "BAD_REQUEST"


def test_owner_ids() -> None:
    assert volume_job.owner_ids("12345:678") == (12345, 678)
    assert volume_job.owner_ids("0") == (0, 0)


# -- the upload spool, the seal, the plan -----------------------------------------------------


async def test_the_spool_is_a_one_file_tar(tmp_path: Path) -> None:
    spool = Spool()
    data = os.urandom(70_001)
    for start in range(0, len(data), 4096):
        await spool.write(data[start : start + 4096])
    archive = spool.finish()
    with tarfile.open(fileobj=archive) as tar:
        members = tar.getmembers()
        assert [(m.name, m.size, m.mode) for m in members] == [(INBOX_MEMBER, len(data), 0o644)]
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        assert extracted.read() == data
    spool.close()


def test_the_seal_is_bound_to_the_volume_and_its_labels() -> None:
    sealer = Sealer(b"k" * 32)
    labels = {"insien.volume.owner": "alice", "insien.volume.name": "data"}
    seal = sealer.volume_seal("insien-vol-1", labels)
    assert sealer.volume_sealed("insien-vol-1", labels, seal)
    assert not sealer.volume_sealed("insien-vol-2", labels, seal)
    assert not sealer.volume_sealed("insien-vol-1", {**labels, "insien.volume.owner": "x"}, seal)
    assert not Sealer(b"j" * 32).volume_sealed("insien-vol-1", labels, seal)
    # A container's labels seal is another purpose: the same key gives another digest.
    assert seal != sealer.seal_labels(labels)["insien.seal"]


def test_plans_carry_volume_quotas(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.acme]\nmax_volumes = 3\nmax_volume_bytes = "2g"\n')
    entry = load_tenants_file(path).tenants["acme"]
    assert (entry.max_volumes, entry.max_volume_bytes) == (3, 2 << 30)


# -- the Python SDK checks what the server says it holds ---------------------------------------


def lying_volume(answer: dict[str, object], digest: str) -> AsyncVolume:
    """A volume whose server answers uploads with `answer` and downloads with `digest`."""

    def reply(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, json=answer)
        return httpx.Response(200, content=b"data", headers={"X-Insien-Sha256": digest})

    volume = AsyncVolume("v", "key", "http://127.0.0.1:9")
    volume._client = lambda timeout=None: httpx.AsyncClient(  # type: ignore[method-assign]
        base_url=volume.base_url, transport=httpx.MockTransport(reply)
    )
    return volume


async def test_the_sdk_raises_when_the_volume_holds_something_else() -> None:
    good = hashlib.sha256(b"data").hexdigest()
    honest = lying_volume({"path": "f", "bytes": 4, "sha256": good}, good)
    assert (await honest.write("f", b"data")).sha256 == good
    assert await honest.read("f") == b"data"
    for answer in (
        {"path": "f", "bytes": 3, "sha256": good},
        {"path": "f", "bytes": 4, "sha256": "0" * 64},
    ):
        with pytest.raises(IntegrityError):
            await lying_volume(answer, good).write("f", b"data")
    for digest in ("0" * 64, ""):
        with pytest.raises(IntegrityError):
            await lying_volume({}, digest).read("f")


async def test_the_sdk_names_the_digest_of_whole_bytes_and_a_refusal_is_an_integrity_error() -> (
    None
):
    """Bytes given whole carry their SHA-256 (`X-Insien-Sha256`); a server that received
    other bytes (here: one flipped on the way) refuses them, and the SDK says so as an
    IntegrityError, not a bare 400. A stream's digest is not known up front: none is named."""
    data = b"the dataset"
    named: list[str | None] = []

    async def reply(request: httpx.Request, flip: bool) -> httpx.Response:
        body = await request.aread()
        named.append(request.headers.get("X-Insien-Sha256"))
        if flip:
            body = body[:-1] + bytes([body[-1] ^ 1])
        received = hashlib.sha256(body).hexdigest()
        expected = request.headers.get("X-Insien-Sha256")
        if expected is not None and expected != received:
            message = (
                f"the body's SHA-256 is {received}, X-Insien-Sha256 says {expected}; "
                "nothing was written"
            )
            return httpx.Response(400, json={"code": "BAD_REQUEST", "message": message})
        return httpx.Response(200, json={"path": "f", "bytes": len(body), "sha256": received})

    def volume(flip: bool) -> AsyncVolume:
        made = AsyncVolume("v", "key", "http://127.0.0.1:9")

        async def handler(request: httpx.Request) -> httpx.Response:
            return await reply(request, flip)

        made._client = lambda timeout=None: httpx.AsyncClient(  # type: ignore[method-assign]
            base_url=made.base_url, transport=httpx.MockTransport(handler)
        )
        return made

    assert (await volume(False).write("f", data)).sha256 == hashlib.sha256(data).hexdigest()
    assert named == [hashlib.sha256(data).hexdigest()]
    with pytest.raises(IntegrityError, match="nothing was written"):
        await volume(True).write("f", data)

    async def stream() -> AsyncIterator[bytes]:
        yield data

    assert (await volume(False).upload("f", stream())).bytes == len(data)
    assert named[-1] is None


# -- a runtime without volumes -----------------------------------------------------------------


async def test_a_runtime_without_volumes_says_so_before_calling_it() -> None:
    volumes = Volumes(FakeRuntime(), Settings(_env_file=None), Sealer(b"k" * 32))
    tenant = Tenant("alice")
    assert await volumes.list(tenant) == []
    assert await volumes.mounts(tenant, []) == ()
    with pytest.raises(NotSupported, match="volumes"):
        await volumes.create(tenant, "data", None)
    with pytest.raises(NotSupported):
        await volumes.get(tenant, "data")
    with pytest.raises(NotSupported):
        await volumes.mounts(tenant, [MountRequest("data", "/data")])
