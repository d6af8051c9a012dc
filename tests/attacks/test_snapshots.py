"""Snapshots are bounded and removable (issue 18): three snapshots of a 200 MB sandbox stayed
on disk for good. Plans limit how many a tenant keeps and the bytes their layers add; a tenant
lists and deletes its own (another tenant's look like none); a removed tenant's go with it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
import trio

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, websocket

PLANS = {
    "keeper": "max_snapshots = 2",
    "small": 'max_snapshot_bytes = "20m"',
    "leaving": "",
}


@dataclass
class Setup:
    server: Server
    path: Path
    keys: dict[str, str]

    def write(self, tenants: tuple[str, ...]) -> None:
        self.path.write_text(
            "\n".join(
                f'[tenants.{name}]\n{PLANS[name]}\nkeys = [{{ id = "{name}-key", '
                f'sha256 = "{hash_key(self.keys[name])}" }}]\n'
                for name in tenants
            )
        )
        stat = self.path.stat()
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    def client(self, name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url, headers={"X-API-Key": self.keys[name]}, timeout=120
        )


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Setup]:
    path = tmp_path_factory.mktemp("snapshots") / "tenants.toml"
    keys = {name: new_key() for name in PLANS}
    found = Setup(None, path, keys)  # type: ignore[arg-type]
    found.write(tuple(PLANS))
    process, found.server = start_server(
        {"INSIEN_TENANTS_FILE": str(path), "INSIEN_API_KEY": ""}, suffix="snapshots"
    )
    yield found
    assert stop_server(process) == 0
    for image in docker_client.images.list(name="insien-snapshot"):
        if image.labels.get("insien.snapshot.owner") in PLANS:
            docker_client.images.remove(str(image.id), force=True)


async def new_sandbox(client: httpx.AsyncClient, fill_mib: int = 0) -> str:
    created = (await client.post("/sandbox/create")).raise_for_status().json()
    if fill_mib:
        async with websocket(created["agentUrl"]) as ws:
            script = f"head -c {fill_mib}M /dev/urandom > /home/user/fill"
            reply = await call(ws, {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", script]})
            assert reply["exitCode"] == 0, reply
    return str(created["sandboxId"])


async def test_a_plan_caps_how_many_snapshots_a_tenant_keeps(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    async with setup.client("keeper") as keeper, setup.client("small") as other:
        sandbox_id = await new_sandbox(keeper)
        made = []
        for _ in range(2):
            response = await keeper.post(f"/sandbox/{sandbox_id}/snapshot")
            assert response.status_code == 200, response.text
            made.append(response.json()["template"])
        refused = await keeper.post(f"/sandbox/{sandbox_id}/snapshot")
        assert refused.status_code == 429
        assert refused.json()["code"] == "QUOTA_EXCEEDED"
        listed = (await keeper.get("/snapshots")).json()["snapshots"]
        assert sorted(s["template"] for s in listed) == sorted(made)
        assert all(s["sandboxId"] == sandbox_id and s["bytes"] >= 0 for s in listed)
        # another tenant sees none of them and cannot delete them
        assert (await other.get("/snapshots")).json()["snapshots"] == []
        assert (await other.delete(f"/snapshots/{made[0]}")).status_code == 404
        missing = await keeper.delete("/snapshots/insien-snapshot:0000000000000000")
        assert missing.status_code == 404
        # deleting one frees its place, and its image
        assert (await keeper.delete(f"/snapshots/{made[0]}")).status_code == 200
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(made[0])
        assert (await keeper.post(f"/sandbox/{sandbox_id}/snapshot")).status_code == 200
        await keeper.post(f"/sandbox/{sandbox_id}/destroy")


async def test_a_plan_caps_the_bytes_snapshots_add(setup: Setup) -> None:
    async with setup.client("small") as small:
        big = await new_sandbox(small, fill_mib=25)
        refused = await small.post(f"/sandbox/{big}/snapshot")
        assert refused.status_code == 429, refused.text
        assert "bytes" in refused.json()["message"]
        little = await new_sandbox(small, fill_mib=1)
        assert (await small.post(f"/sandbox/{little}/snapshot")).status_code == 200
        for sandbox_id in (big, little):
            await small.post(f"/sandbox/{sandbox_id}/destroy")


async def test_a_removed_tenants_snapshots_go_with_it(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    async with setup.client("leaving") as leaving:
        sandbox_id = await new_sandbox(leaving)
        template = (await leaving.post(f"/sandbox/{sandbox_id}/snapshot")).json()["template"]
        await leaving.post(f"/sandbox/{sandbox_id}/destroy")
    docker_client.images.get(template)
    setup.write(("keeper", "small"))
    try:
        with trio.fail_after(20):
            while True:
                try:
                    docker_client.images.get(template)
                except docker.errors.ImageNotFound:
                    break
                await trio.sleep(0.5)
    finally:
        setup.write(tuple(PLANS))
