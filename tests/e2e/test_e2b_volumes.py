"""E2B's Volume API through the stock SDKs (issue 32), pointed at Insien by E2B's three URL
variables alone (`E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_VOLUME_API_URL`, all `<server>/e2b`):
a volume made, listed and looked up, its files written, read, listed and removed without a
sandbox, mounted into a sandbox by `volume_mounts` (which sees the files and writes back), not
destroyed while mounted, destroyed after. The same through the async SDK and the JS SDK."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess

import pytest
from e2b import (
    AsyncSandbox,
    AsyncVolume,
    Sandbox,
    Volume,
    VolumeException,
    VolumeFileType,
    VolumeNotFoundException,
    VolumePathNotFoundException,
)

from tests.conftest import Server
from tests.e2e.test_e2b_js import run_suite


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    for variable in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_VOLUME_API_URL"):
        monkeypatch.setenv(variable, f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


def test_the_stock_python_sdk_volume_api(e2b_env: Server) -> None:
    name = f"e2b-{secrets.token_hex(4)}"
    volume = Volume.create(name)
    try:
        assert volume.name == name
        assert volume.volume_id.startswith("vol_")
        assert (volume.volume_id, name) in [(v.volume_id, v.name) for v in Volume.list()]
        assert Volume.get_info(volume.volume_id).name == name
        by_name = Volume.connect(name)  # the name works wherever an id does
        entry = volume.write_file("/seed/note.txt", "hello volume")
        assert (entry.path, entry.type, entry.size) == ("/seed/note.txt", VolumeFileType.FILE, 12)
        blob = secrets.token_bytes(300_000)
        assert volume.write_file("/seed/blob.bin", blob).size == len(blob)
        assert by_name.read_file("/seed/note.txt") == "hello volume"
        assert volume.read_file("/seed/blob.bin", format="bytes") == blob
        made = volume.make_dir("/out")
        assert (made.path, made.type) == ("/out", VolumeFileType.DIRECTORY)
        deep = {e.path: e.type for e in volume.list("/", depth=2)}
        assert deep == {
            "/out": VolumeFileType.DIRECTORY,
            "/seed": VolumeFileType.DIRECTORY,
            "/seed/blob.bin": VolumeFileType.FILE,
            "/seed/note.txt": VolumeFileType.FILE,
        }
        assert volume.get_info("/seed/note.txt").size == 12
        assert not volume.exists("/nothing")
        sandbox = Sandbox.create(volume_mounts={"/data": volume})
        try:
            seen = sandbox.commands.run("cat /data/seed/note.txt; sha256sum /data/seed/blob.bin")
            assert seen.stdout.startswith("hello volume")
            summed = seen.stdout.removeprefix("hello volume").split()[0]
            assert summed == hashlib.sha256(blob).hexdigest()
            sandbox.commands.run("echo from the sandbox > /data/out/reply")
            with pytest.raises(VolumeException, match="mounted"):
                Volume.destroy(volume.volume_id)
        finally:
            sandbox.kill()
        assert volume.read_file("/out/reply") == "from the sandbox\n"
        volume.remove("/seed")
        with pytest.raises(VolumePathNotFoundException):
            volume.read_file("/seed/note.txt")
    finally:
        assert Volume.destroy(volume.volume_id) is True
    assert Volume.destroy(volume.volume_id) is False
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(volume.volume_id)


def test_the_stock_async_python_sdk_volume_api(e2b_env: Server) -> None:
    """E2B's async SDK runs on asyncio: driven by `asyncio.run`."""
    name = f"e2b-async-{secrets.token_hex(4)}"

    async def drive() -> None:
        volume = await AsyncVolume.create(name)
        try:
            assert name in [v.name for v in await AsyncVolume.list()]
            assert (await volume.write_file("/in.txt", b"async bytes")).size == 11
            sandbox = await AsyncSandbox.create(volume_mounts={"/mnt/vol": name})
            try:
                seen = await sandbox.commands.run("cat /mnt/vol/in.txt; echo -n back > /mnt/vol/o")
                assert seen.stdout == "async bytes"
            finally:
                await sandbox.kill()
            assert await volume.read_file("/o", format="bytes") == b"back"
            assert sorted(e.name for e in await volume.list("/")) == ["in.txt", "o"]
            await volume.remove("/o")
            assert not await volume.exists("/o")
        finally:
            assert await AsyncVolume.destroy(volume.volume_id) is True

    asyncio.run(drive())


def test_the_stock_js_sdk_volume_api(e2b_env: Server) -> None:
    done: subprocess.CompletedProcess[str] = run_suite(e2b_env, "volumes.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 1" in done.stdout, done.stdout[-3000:]
