"""Volumes under faults (issue 32): the server killed (SIGKILL) mid-upload into a volume, while
the body arrives and while the volume job writes it, leaves the old file or the whole new one,
never a part, and never both "success" and missing bytes; a job the dead server left behind
does not block the volume; a tenant removed from the tenants file loses its volumes (and their
disks) once no sandbox mounts them, and no one else's."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, websocket
from tests.volume_disks import DISKS, NEEDS_DISKS, remove_volumes

SUFFIX = "volume-faults"
MIB = 1 << 20


@dataclass
class Setup:
    path: Path
    keys: dict[str, str]
    server: Server
    process: Any

    def client(self, tenant: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url, headers={"X-API-Key": self.keys[tenant]}, timeout=120
        )

    def write_tenants(self, tenants: tuple[str, ...]) -> None:
        self.path.write_text(
            "".join(
                f'[tenants.{name}]\nkeys = [{{ id = "{name}-key", '
                f'sha256 = "{hash_key(self.keys[name])}" }}]\n'
                for name in tenants
            )
        )

    def restart(self, kill: bool) -> None:
        """SIGKILL (kill) or SIGTERM the server and start it again on the same state."""
        if kill:
            self.process.kill()
            self.process.wait()
        else:
            assert stop_server(self.process) == 0
        self.process, self.server = start_server(self.env(), suffix=SUFFIX)

    def env(self) -> dict[str, str]:
        return {"INSIEN_TENANTS_FILE": str(self.path), "INSIEN_API_KEY": ""}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Setup]:
    path = tmp_path_factory.mktemp("volume-faults") / "tenants.toml"
    keys = {name: new_key() for name in ("carol", "dave")}
    made = Setup(path, keys, Server("", "", "", Path(), 0), None)
    made.write_tenants(("carol", "dave"))
    made.process, made.server = start_server(made.env(), suffix=SUFFIX)
    yield made
    if made.process.poll() is None:
        stop_server(made.process)
    remove_volumes(docker_client, made.server.instance)


def runtime_name(client: docker.DockerClient, instance: str, owner: str, name: str) -> str | None:
    found = client.volumes.list(
        filters={
            "label": [
                f"insien.volume.instance={instance}",
                f"insien.volume.owner={owner}",
                f"insien.volume.name={name}",
            ]
        }
    )
    return found[0].name if found else None


async def until(check: Any, seconds: float, what: str) -> None:
    """Poll `check()` until it is true, failing with `what` past the deadline."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await trio.sleep(0.1)


async def make(api: httpx.AsyncClient, name: str) -> None:
    made = await api.post("/volumes", json={"name": name, "sizeLimit": "128m"})
    assert made.status_code == 200, made.text


async def kill_mid_upload(
    setup: Setup, docker_client: docker.DockerClient, volume: str, new: bytes, moment: str
) -> None:
    """Upload `new` over `f` and SIGKILL the server half-way through the body (`body`) or
    while the volume job writes it (`job`), then start it again."""
    received = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(new), MIB):
            if moment == "body" and start == len(new) // 2:
                received.set()  # half sent: the server dies before the rest
                await trio.sleep_forever()
            yield new[start : start + MIB]

    async def upload(api: httpx.AsyncClient) -> None:
        try:
            answer = await api.put("/volumes/killed/files", params={"path": "f"}, content=body())
        except httpx.HTTPError:
            return
        # An answer that came before the kill must be a success of the whole file.
        assert answer.status_code == 200, answer.text
        assert answer.json()["sha256"] == hashlib.sha256(new).hexdigest()

    def job_running() -> bool:
        return bool(
            docker_client.api.containers(
                filters={"label": f"insien.volume-job={volume}", "status": "running"}
            )
        )

    async with setup.client("dave") as api, trio.open_nursery() as nursery:
        nursery.start_soon(upload, api)
        if moment == "body":
            await received.wait()
        else:
            await until(job_running, 30, "the volume job never started")
        await trio.to_thread.run_sync(setup.restart, True)
        nursery.cancel_scope.cancel()


async def test_a_server_killed_mid_upload_leaves_the_old_file_or_the_new_one(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    async with setup.client("dave") as api:
        await make(api, "killed")
        old = secrets.token_bytes(MIB)
        first = await api.put("/volumes/killed/files", params={"path": "f"}, content=old)
        assert first.status_code == 200, first.text
    volume = runtime_name(docker_client, setup.server.instance, "dave", "killed")
    assert volume is not None
    new = secrets.token_bytes(32 * MIB)
    for moment in ("body", "job"):
        await kill_mid_upload(setup, docker_client, volume, new, moment)
        async with setup.client("dave") as api:
            got = await api.get("/volumes/killed/files", params={"path": "f"})
            assert got.status_code == 200, got.text
            assert got.content in (old, new), (moment, len(got.content))
            if moment == "body":
                assert got.content == old  # nothing is written before the whole body is here
            assert got.headers["X-Insien-Sha256"] == hashlib.sha256(got.content).hexdigest()
            listed = (await api.get("/volumes/killed/entries", params={"path": "/"})).json()
            names = [entry["name"] for entry in listed["entries"]]
            assert names == ["f"], names  # no half-written temporary left to be found

    # The job the killed server left behind ends on its own and does not hold the volume.
    async with setup.client("dave") as api:
        deadline = time.monotonic() + 30
        while (deleted := await api.delete("/volumes/killed")).status_code == 409:
            assert time.monotonic() < deadline, deleted.text
            await trio.sleep(0.2)
        assert deleted.status_code == 200, deleted.text
    assert docker_client.api.containers(all=True, filters={"volume": volume}) == []
    assert not (DISKS / f"{volume}.img").exists()


async def test_a_removed_tenants_volumes_go_with_it_once_unmounted(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    async with setup.client("carol") as carol, setup.client("dave") as dave:
        await make(carol, "held")
        await make(carol, "loose")
        await make(dave, "stay")
        created = await carol.post(
            "/sandbox/create", json={"volumes": [{"name": "held", "path": "/data"}]}
        )
        assert created.status_code == 200, created.text
    instance = setup.server.instance
    held = runtime_name(docker_client, instance, "carol", "held")
    loose = runtime_name(docker_client, instance, "carol", "loose")
    stay = runtime_name(docker_client, instance, "dave", "stay")
    assert held
    assert loose
    assert stay
    try:
        setup.write_tenants(("dave",))
        await until(
            lambda: runtime_name(docker_client, instance, "carol", "loose") is None,
            30,
            "the removed tenant's unmounted volume was not purged",
        )
        await until(lambda: not (DISKS / f"{loose}.img").exists(), 10, "its disk stayed")
        # Same pass: the mounted one is kept while its sandbox runs; the other tenant's stays.
        assert runtime_name(docker_client, instance, "carol", "held") == held
        for container in docker_client.api.containers(filters={"volume": held}):
            docker_client.api.remove_container(container["Id"], force=True)
        await until(
            lambda: runtime_name(docker_client, instance, "carol", "held") is None,
            30,
            "the removed tenant's volume was not purged once unmounted",
        )
        await until(lambda: not (DISKS / f"{held}.img").exists(), 10, "its disk stayed")
        assert runtime_name(docker_client, instance, "dave", "stay") == stay
        async with setup.client("dave") as dave:
            assert [v["name"] for v in (await dave.get("/volumes")).json()["volumes"]] == ["stay"]
    finally:
        setup.write_tenants(("carol", "dave"))


@NEEDS_DISKS
async def test_a_volume_whose_loop_device_is_gone_is_attached_again(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    """As after a reboot: the loop device behind a volume's disk is detached while nothing
    mounts it; the next mount attaches the image again and finds every byte."""
    data = secrets.token_bytes(2 * MIB)
    async with setup.client("dave") as api:
        await make(api, "reboot")
        put = await api.put("/volumes/reboot/files", params={"path": "d"}, content=data)
        assert put.status_code == 200, put.text
        volume = runtime_name(docker_client, setup.server.instance, "dave", "reboot")
        assert volume is not None
        image = DISKS / f"{volume}.img"
        listed = await trio.run_process(
            ["losetup", "--associated", str(image), "--noheadings", "-O", "NAME"],
            capture_stdout=True,
        )
        loops = listed.stdout.decode().split()
        assert loops
        for loop in loops:
            await trio.run_process(["losetup", "--detach", loop])
        created = await api.post(
            "/sandbox/create", json={"volumes": [{"name": "reboot", "path": "/data"}]}
        )
        assert created.status_code == 200, created.text
        made = created.json()
        async with websocket(made["agentUrl"]) as ws:
            message = {"id": 1, "type": "exec", "cmd": "sha256sum", "args": ["/data/d"]}
            seen = await call(ws, message, timeout=60)
        assert seen["stdout"].split()[0] == hashlib.sha256(data).hexdigest(), seen
        await api.post(f"/sandbox/{made['sandboxId']}/destroy")
        assert (await api.delete("/volumes/reboot")).status_code == 200
