"""Volumes end to end (issue 32): made per tenant within a plan, mounted into several
sandboxes at once, kept after they are gone, read-only where asked, reachable without a
sandbox (with the size and SHA-256 of what was written), bounded by their size limit, and
not deleted while mounted unless forced."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio
from e2b import Sandbox as E2BSandbox
from e2b import SandboxException as E2BSandboxException

from insien_sandbox import AsyncSandbox, AsyncVolume, NotFoundError, Sandbox, Volume, VolumeMount
from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, websocket
from tests.volume_disks import DISKS, NEEDS_DISKS, remove_volumes

MIB = 1 << 20


@pytest.fixture(scope="module")
def volume_server(docker_client: docker.DockerClient) -> Iterator[Server]:
    process, info = start_server(
        {"INSIEN_MAX_VOLUMES": "3", "INSIEN_MAX_VOLUME_BYTES": "64m"}, suffix="volumes"
    )
    yield info
    assert stop_server(process) == 0, info.log()[-4000:]
    remove_volumes(docker_client, info.instance)


@asynccontextmanager
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as made:
        yield made


@asynccontextmanager
async def volume(api: httpx.AsyncClient, size: str = "8m") -> AsyncIterator[str]:
    """A fresh volume, deleted (forcibly) afterwards."""
    name = f"vol-{secrets.token_hex(4)}"
    made = await api.post("/volumes", json={"name": name, "sizeLimit": size})
    assert made.status_code == 200, made.text
    try:
        yield name
    finally:
        with trio.CancelScope(shield=True):
            await api.delete(f"/volumes/{name}", params={"force": "true"})


async def create(api: httpx.AsyncClient, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    made = await api.post("/sandbox/create", json={"volumes": mounts})
    assert made.status_code == 200, made.text
    return dict(made.json())


async def sh(created: dict[str, Any], script: str) -> dict[str, Any]:
    async with websocket(created["agentUrl"]) as ws:
        message = {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", script]}
        return await call(ws, message, timeout=60)


async def test_a_volume_is_shared_by_two_sandboxes_and_outlives_them(
    volume_server: Server,
) -> None:
    async with client(volume_server) as api, volume(api) as name:
        listed = (await api.get("/volumes")).json()["volumes"]
        assert [v["name"] for v in listed if v["name"] == name] == [name]
        assert next(v for v in listed if v["name"] == name)["sizeLimit"] == 8 * MIB
        writer = await create(api, [{"name": name, "path": "/data"}])
        reader = await create(api, [{"name": name, "path": "/mnt/shared", "readOnly": True}])
        wrote = await sh(writer, "echo hello from one > /data/note && stat -c %u:%g /data/note")
        assert wrote["exitCode"] == 0, wrote
        assert wrote["stdout"].strip() == "1000:1000"  # the sandbox user owns what it writes
        read = await sh(reader, "cat /mnt/shared/note")
        assert read["stdout"] == "hello from one\n", read
        refused = await sh(reader, "echo no > /mnt/shared/other")
        assert refused["exitCode"] != 0
        assert "Read-only file system" in refused["stderr"], refused

        info = (await api.get(f"/volumes/{name}")).json()
        assert sorted(info["sandboxes"]) == sorted([writer["sandboxId"], reader["sandboxId"]])
        assert info["bytesUsed"] == len("hello from one\n")

        busy = await api.delete(f"/volumes/{name}")
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "BUSY"

        for made in (writer, reader):
            await api.post(f"/sandbox/{made['sandboxId']}/destroy")
        info = (await api.get(f"/volumes/{name}")).json()
        assert info["sandboxes"] == []
        # Gone are the sandboxes, not the files: without a sandbox, and in a new one.
        kept = await api.get(f"/volumes/{name}/files", params={"path": "note"})
        assert kept.content == b"hello from one\n"
        again = await create(api, [{"name": name, "path": "/home/user/work"}])
        seen = await sh(again, "cat /home/user/work/note")
        assert seen["stdout"] == "hello from one\n"
        await api.post(f"/sandbox/{again['sandboxId']}/destroy")


async def test_files_without_a_sandbox(volume_server: Server) -> None:
    async with client(volume_server) as api, volume(api) as name:
        data = secrets.token_bytes(3 * MIB + 17)
        put = await api.put(
            f"/volumes/{name}/files", params={"path": "/set/part/blob.bin"}, content=data
        )
        assert put.status_code == 200, put.text
        assert put.json() == {
            "success": True,
            "path": "/set/part/blob.bin",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        got = await api.get(f"/volumes/{name}/files", params={"path": "set/part/blob.bin"})
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["x-insien-sha256"] == hashlib.sha256(data).hexdigest()
        made = await api.post(f"/volumes/{name}/folders", params={"path": "set/empty"})
        assert made.status_code == 200, made.text
        listed = (await api.get(f"/volumes/{name}/entries", params={"path": "set"})).json()
        assert [(e["name"], e["type"]) for e in listed["entries"]] == [
            ("empty", "dir"),
            ("part", "dir"),
        ]
        # A sandbox sees what was written without one, owned by its user.
        sandbox = await create(api, [{"name": name, "path": "/data"}])
        seen = await sh(sandbox, "sha256sum /data/set/part/blob.bin; stat -c %u /data/set/part")
        assert seen["stdout"].split()[0] == hashlib.sha256(data).hexdigest()
        assert seen["stdout"].split()[-1] == "1000"
        await api.post(f"/sandbox/{sandbox['sandboxId']}/destroy")

        removed = await api.delete(f"/volumes/{name}/files", params={"path": "set"})
        assert removed.status_code == 200, removed.text
        missing = await api.get(f"/volumes/{name}/files", params={"path": "set/part/blob.bin"})
        assert missing.status_code == 404
        assert missing.json()["code"] == "NOT_FOUND"
        folder = await api.get(f"/volumes/{name}/files", params={"path": "/"})
        assert folder.status_code == 400
        escape = await api.get(f"/volumes/{name}/files", params={"path": "../../etc/passwd"})
        assert escape.status_code == 400
        assert (await api.get(f"/volumes/{name}")).json()["bytesUsed"] == 0


async def test_the_size_limit_refuses_writes_past_it(volume_server: Server) -> None:
    async with client(volume_server) as api, volume(api, size="2m") as name:
        original = secrets.token_bytes(3 * MIB // 2)
        first = await api.put(f"/volumes/{name}/files", params={"path": "a"}, content=original)
        assert first.status_code == 200, first.text
        over = await api.put(f"/volumes/{name}/files", params={"path": "b"}, content=bytes(MIB))
        assert over.status_code == 507, over.text
        assert over.json()["code"] == "TOO_LARGE"
        absent = await api.get(f"/volumes/{name}/files", params={"path": "b"})
        assert absent.status_code == 404  # refused means nothing written
        whole = await api.put(
            f"/volumes/{name}/files", params={"path": "c"}, content=bytes(2 * MIB + 1)
        )
        assert whole.status_code == 507  # past the limit on its declared length alone
        assert (await api.get(f"/volumes/{name}")).json()["bytesUsed"] == len(original)
        listed = (await api.get(f"/volumes/{name}/entries", params={"path": "/"})).json()
        assert [entry["name"] for entry in listed["entries"]] == ["a"]  # no temporary left


@NEEDS_DISKS
async def test_a_replacement_needs_room_beside_the_old_copy_on_a_volume_disk(
    volume_server: Server,
) -> None:
    async with client(volume_server) as api, volume(api, size="2m") as name:
        original = secrets.token_bytes(3 * MIB // 2)
        first = await api.put(f"/volumes/{name}/files", params={"path": "a"}, content=original)
        assert first.status_code == 200, first.text
        # A replacement lands whole or not at all: the volume's own disk has no room for the
        # new copy beside the old one, so it is refused and the old one is kept, byte for byte.
        replaced = await api.put(
            f"/volumes/{name}/files", params={"path": "a"}, content=bytes(2 * MIB - 1)
        )
        assert replaced.status_code == 507, replaced.text
        kept = await api.get(f"/volumes/{name}/files", params={"path": "a"})
        assert kept.content == original


async def test_an_upload_is_checked_against_the_digest_it_names(volume_server: Server) -> None:
    async with client(volume_server) as api, volume(api) as name:
        data = secrets.token_bytes(MIB + 3)
        digest = hashlib.sha256(data).hexdigest()
        right = await api.put(
            f"/volumes/{name}/files",
            params={"path": "d"},
            content=data,
            headers={"X-Insien-Sha256": digest},
        )
        assert right.status_code == 200, right.text
        assert right.json()["sha256"] == digest
        # A body cut or changed on the way (here: one byte flipped) is refused whole.
        changed = data[:-1] + bytes([data[-1] ^ 1])
        wrong = await api.put(
            f"/volumes/{name}/files",
            params={"path": "d"},
            content=changed,
            headers={"X-Insien-Sha256": digest},
        )
        assert wrong.status_code == 400, wrong.text
        assert "nothing was written" in wrong.json()["message"]
        short = await api.put(
            f"/volumes/{name}/files",
            params={"path": "e"},
            content=data[: MIB // 2],
            headers={"X-Insien-Sha256": digest},
        )
        assert short.status_code == 400, short.text
        kept = await api.get(f"/volumes/{name}/files", params={"path": "d"})
        assert kept.content == data
        assert kept.headers["X-Insien-Sha256"] == digest
        absent = await api.get(f"/volumes/{name}/files", params={"path": "e"})
        assert absent.status_code == 404
        bad = await api.put(
            f"/volumes/{name}/files",
            params={"path": "f"},
            content=b"x",
            headers={"X-Insien-Sha256": "not-hex"},
        )
        assert bad.status_code == 400


@NEEDS_DISKS
async def test_a_write_past_the_limit_fails_with_enospc_inside_a_sandbox(
    volume_server: Server, docker_client: docker.DockerClient
) -> None:
    async with client(volume_server) as api, volume(api, size="4m") as name:
        sandbox = await create(api, [{"name": name, "path": "/data"}])
        done = await sh(
            sandbox,
            "head -c 1048576 /dev/urandom > /data/kept && sha256sum /data/kept && "
            "dd if=/dev/zero of=/data/big bs=64K count=160 2>&1; echo status=$?; "
            "rm /data/big; ls -A /data",
        )
        assert "No space left on device" in done["stdout"], done
        assert "status=1" in done["stdout"], done
        assert done["stdout"].rstrip().endswith("\nkept"), done  # nothing but the user's file
        digest = done["stdout"].split()[0]
        await api.post(f"/sandbox/{sandbox['sandboxId']}/destroy")
        kept = await api.get(f"/volumes/{name}/files", params={"path": "kept"})
        assert hashlib.sha256(kept.content).hexdigest() == digest
        assert kept.headers["X-Insien-Sha256"] == digest
        (made,) = docker_client.volumes.list(
            filters={
                "label": [
                    f"insien.volume.instance={volume_server.instance}",
                    f"insien.volume.name={name}",
                ]
            }
        )
        assert made.attrs["Options"]["type"] == "ext4"
        image = DISKS / f"{made.name}.img"
        assert image.exists()
    assert not image.exists()  # deleting the volume deletes its disk (and frees its loop)
    assert not image.with_suffix(".dev").exists()


async def test_plan_quotas_names_and_sizes(volume_server: Server) -> None:
    async with client(volume_server) as api:
        for body in (
            {"name": "../x"},
            {"name": ""},
            {"name": "a" * 64},
            {"name": "ok", "sizeLimit": "lots"},
            {"name": "ok", "sizeLimit": 1024},
            {"name": "ok", "extra": 1},
        ):
            refused = await api.post("/volumes", json=body)
            assert refused.status_code == 400, (body, refused.text)
        async with volume(api, size="30m") as first:
            again = await api.post("/volumes", json={"name": first, "sizeLimit": "1m"})
            assert again.status_code == 409
            assert again.json()["code"] == "ALREADY_EXISTS"
            # 64m for the plan: 30m + 30m fit, 30m more does not.
            async with volume(api, size="30m"):
                over = await api.post("/volumes", json={"name": "third", "sizeLimit": "30m"})
                assert over.status_code == 429, over.text
                assert over.json()["code"] == "QUOTA_EXCEEDED"
                async with volume(api, size="1m"):
                    fourth = await api.post("/volumes", json={"name": "fourth", "sizeLimit": "1m"})
                    assert fourth.status_code == 429  # at most 3 volumes
        gone = await api.get("/volumes/never-made")
        assert gone.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "relative",
        "/opt",
        "/opt/insien",
        "/opt/insien/x",
        "/proc",
        "/sys/fs",
        "/dev",
        "/etc",
        "/usr/local",
        "/bin",
        "/lib64",
        "/tmp",
        "/tmp/x",
        "/data/../etc",
        "/data/./x",
    ],
)
async def test_mount_paths_that_would_hide_the_agent_or_the_system_are_refused(
    volume_server: Server, path: str
) -> None:
    async with client(volume_server) as api:
        made = await api.post(
            "/sandbox/create", json={"volumes": [{"name": "whatever", "path": path}]}
        )
        assert made.status_code == 400, made.text
        assert "volumes:" in made.json()["message"]


async def test_force_delete_ends_the_sandboxes_that_mount_it(volume_server: Server) -> None:
    async with client(volume_server) as api:
        name = f"vol-{secrets.token_hex(4)}"
        assert (
            await api.post("/volumes", json={"name": name, "sizeLimit": "4m"})
        ).status_code == 200
        sandbox = await create(api, [{"name": name, "path": "/data"}])
        missing = await api.post(
            "/sandbox/create", json={"volumes": [{"name": "nope", "path": "/data"}]}
        )
        assert missing.status_code == 404
        forced = await api.delete(f"/volumes/{name}", params={"force": "true"})
        assert forced.status_code == 200, forced.text
        info = (await api.get(f"/sandboxes/{sandbox['sandboxId']}")).json()
        assert info["state"] == "ended"
        assert (await api.get(f"/volumes/{name}")).status_code == 404


async def test_the_python_sdk(volume_server: Server, tmp_path: Path) -> None:
    name = f"sdk-{secrets.token_hex(4)}"
    key, url = volume_server.api_key, volume_server.url
    volume = await AsyncVolume.create(name, "8m", key, url)
    try:
        assert name in [v.name for v in await AsyncVolume.list(key, url)]
        local = tmp_path / "set.bin"
        data = secrets.token_bytes(2 * MIB + 3)
        local.write_bytes(data)
        seen: list[int] = []
        written = await volume.upload("in/set.bin", local, on_progress=seen.append)
        assert (written.bytes, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert seen[-1] == len(data)
        async with AsyncSandbox(key, url, volumes=[volume.mount("/data")]) as sandbox:
            result = await sandbox.commands.run("sha256sum /data/in/set.bin > /data/sum")
            assert result.exit_code == 0
            info = await volume.info()
            assert info.sandboxes == (sandbox.sandbox_id,)
        assert (await volume.read("sum")).split()[0].decode() == written.sha256
        back = tmp_path / "back.bin"
        await volume.download("in/set.bin", back)
        assert back.read_bytes() == data
        assert [e.name for e in await volume.list_files("/")] == ["in", "sum"]
        with pytest.raises(NotFoundError):
            await volume.read("missing")
    finally:
        await volume.delete(force=True)
    with pytest.raises(NotFoundError):
        await volume.info()


def test_the_blocking_python_sdk(volume_server: Server) -> None:
    key, url = volume_server.api_key, volume_server.url
    volume = Volume.create(f"sync-{secrets.token_hex(4)}", "4m", key, url)
    try:
        assert volume.write("note", "hi").bytes == 2
        with Sandbox(key, url, volumes=[VolumeMount(volume.name, "/data", read_only=True)]) as box:
            assert box.commands.run("cat /data/note").stdout == "hi"
        volume.remove("note")
        assert volume.list_files() == []
    finally:
        volume.delete(force=True)


def test_the_stock_e2b_sdk_mounts_a_volume_by_name(
    volume_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_URL", f"{volume_server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{volume_server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", volume_server.api_key)
    name = f"e2b-{secrets.token_hex(4)}"
    with httpx.Client(base_url=volume_server.url, headers=volume_server.headers) as api:
        made = api.post("/volumes", json={"name": name, "sizeLimit": "4m"})
        assert made.status_code == 200, made.text
        try:
            api.put(
                f"/volumes/{name}/files", params={"path": "note"}, content=b"hi"
            ).raise_for_status()
            sandbox = E2BSandbox.create(volume_mounts={"/data": name})
            try:
                assert sandbox.commands.run("cat /data/note").stdout == "hi"
                sandbox.commands.run("echo back > /data/reply")
            finally:
                sandbox.kill()
            assert api.get(f"/volumes/{name}/files", params={"path": "reply"}).content == b"back\n"
            with pytest.raises(E2BSandboxException, match="system folder"):
                E2BSandbox.create(volume_mounts={"/etc": name})
        finally:
            api.delete(f"/volumes/{name}", params={"force": "true"})
