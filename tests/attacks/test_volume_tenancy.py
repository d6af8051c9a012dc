"""Volumes cannot be reached across tenants, forged, or used to leave the volume (issue 32).

- Another tenant's volume, asked for by its name, is a 404 on every route and is never
  mounted into a create.
- A Docker volume made outside Insien with Insien's labels (a made-up seal, or a genuine
  volume's labels and seal copied onto another volume) is never listed or mounted, before
  a restart or after it, while the genuine volume is found again from Docker's labels.
- A symlink a sandbox leaves in a volume (to `/etc`, to `/etc/passwd`) does not lead the
  file routes out of the volume: they refuse it, and never read or write through it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server
from tests.e2e.helpers import call, websocket
from tests.volume_disks import remove_volumes

TENANTS = ("alice", "mallory")
SUFFIX = "volume-tenancy"


@dataclass
class Setup:
    path: Path
    keys: dict[str, str]
    server: Server | None = None
    process: Any = None
    made: list[str] = field(default_factory=list)

    def client(self, name: str) -> httpx.AsyncClient:
        assert self.server is not None
        return httpx.AsyncClient(
            base_url=self.server.url, headers={"X-API-Key": self.keys[name]}, timeout=120
        )

    def start(self) -> None:
        env = {"INSIEN_TENANTS_FILE": str(self.path), "INSIEN_API_KEY": ""}
        self.process, self.server = start_server(env, suffix=SUFFIX)

    def stop(self) -> None:
        assert stop_server(self.process) == 0


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Setup]:
    path = tmp_path_factory.mktemp("volumes") / "tenants.toml"
    keys = {name: new_key() for name in TENANTS}
    path.write_text(
        "".join(
            f'[tenants.{name}]\nkeys = [{{ id = "{name}-key", '
            f'sha256 = "{hash_key(keys[name])}" }}]\n'
            for name in TENANTS
        )
    )
    found = Setup(path, keys)
    found.start()
    yield found
    found.stop()
    assert found.server is not None
    for name in found.made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(name).remove(force=True)
    remove_volumes(docker_client, found.server.instance)


async def make_volume(api: httpx.AsyncClient, name: str) -> None:
    made = await api.post("/volumes", json={"name": name, "sizeLimit": "4m"})
    assert made.status_code == 200, made.text


async def sh(api: httpx.AsyncClient, body: dict[str, Any], script: str) -> dict[str, Any]:
    created = await api.post("/sandbox/create", json=body)
    assert created.status_code == 200, created.text
    made = created.json()
    try:
        async with websocket(made["agentUrl"]) as ws:
            message = {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", script]}
            return await call(ws, message, timeout=60)
    finally:
        await api.post(f"/sandbox/{made['sandboxId']}/destroy")


async def test_another_tenants_volume_is_not_found_and_never_mounted(setup: Setup) -> None:
    async with setup.client("alice") as alice, setup.client("mallory") as mallory:
        await make_volume(alice, "secrets")
        put = await alice.put("/volumes/secrets/files", params={"path": "key"}, content=b"s3cr3t")
        assert put.status_code == 200, put.text

        for method, url, params in (
            ("GET", "/volumes/secrets", {}),
            ("GET", "/volumes/secrets/files", {"path": "key"}),
            ("GET", "/volumes/secrets/entries", {"path": "/"}),
            ("PUT", "/volumes/secrets/files", {"path": "planted"}),
            ("DELETE", "/volumes/secrets/files", {"path": "key"}),
            ("POST", "/volumes/secrets/folders", {"path": "x"}),
            ("DELETE", "/volumes/secrets", {"force": "true"}),
        ):
            answer = await mallory.request(method, url, params=params, content=b"x")
            assert answer.status_code == 404, (method, url, answer.text)
            assert answer.json()["code"] == "NOT_FOUND"
        assert (await mallory.get("/volumes")).json() == {"volumes": []}
        refused = await mallory.post(
            "/sandbox/create", json={"volumes": [{"name": "secrets", "path": "/data"}]}
        )
        assert refused.status_code == 404, refused.text

        # Mallory may use the same name for a volume of her own: a different volume.
        await make_volume(mallory, "secrets")
        seen = await sh(
            mallory,
            {"volumes": [{"name": "secrets", "path": "/data"}]},
            "ls -A /data; cat /data/key 2>&1",
        )
        assert "s3cr3t" not in seen["stdout"]
        got = await alice.get("/volumes/secrets/files", params={"path": "key"})
        assert got.content == b"s3cr3t"


async def test_a_forged_volume_is_never_adopted_even_after_a_restart(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    assert setup.server is not None
    async with setup.client("alice") as alice:
        await make_volume(alice, "genuine")
    genuine = docker_client.volumes.list(
        filters={"label": ["insien.volume.owner=alice", "insien.volume.name=genuine"]}
    )
    assert len(genuine) == 1
    labels = dict(genuine[0].attrs["Labels"])
    copied = f"insien-vol-{secrets.token_hex(12)}"
    made_up = f"insien-vol-{secrets.token_hex(12)}"
    setup.made += [copied, made_up]
    # The genuine labels and seal on another volume; and a seal made up from nothing.
    docker_client.volumes.create(copied, labels={**labels, "insien.volume.name": "copied"})
    docker_client.volumes.create(
        made_up,
        labels={
            **labels,
            "insien.volume.name": "madeup",
            "insien.volume.seal": "0" * 64,
        },
    )

    for restarted in (False, True):
        if restarted:
            setup.stop()
            setup.start()
        async with setup.client("alice") as alice:
            names = [v["name"] for v in (await alice.get("/volumes")).json()["volumes"]]
            assert "genuine" in names, restarted
            assert "copied" not in names, names
            assert "madeup" not in names, names
            for name in ("copied", "madeup"):
                assert (await alice.get(f"/volumes/{name}")).status_code == 404
                refused = await alice.post(
                    "/sandbox/create", json={"volumes": [{"name": name, "path": "/data"}]}
                )
                assert refused.status_code == 404, refused.text
    used = docker_client.api.containers(all=True, filters={"volume": copied})
    assert used == []


async def test_a_symlink_in_the_volume_does_not_lead_the_file_routes_out(
    setup: Setup,
) -> None:
    async with setup.client("alice") as alice:
        await make_volume(alice, "links")
        made = await sh(
            alice,
            {"volumes": [{"name": "links", "path": "/data"}]},
            "ln -s /etc /data/etc && ln -s /etc/passwd /data/pw && ln -s / /data/root && "
            "mkdir /data/real && echo kept > /data/real/file && ln -s ../real /data/up",
        )
        assert made["exitCode"] == 0, made

        for path in ("etc/passwd", "pw", "root/etc/hostname", "up/file", "etc"):
            got = await alice.get("/volumes/links/files", params={"path": path})
            assert got.status_code in (400, 403), (path, got.status_code, got.text[:200])
            assert b"root:x:0:0" not in got.content
        for path in ("etc", "root/etc", "up"):
            listed = await alice.get("/volumes/links/entries", params={"path": path})
            assert listed.status_code in (400, 403), (path, listed.text[:200])
        for path in ("etc/planted", "root/tmp/planted", "up/planted"):
            put = await alice.put("/volumes/links/files", params={"path": path}, content=b"x")
            assert put.status_code in (400, 403), (path, put.text)
            gone = await alice.delete("/volumes/links/files", params={"path": f"{path}/.."})
            assert gone.status_code == 400
        removed = await alice.delete("/volumes/links/files", params={"path": "up/file"})
        assert removed.status_code in (400, 403)

        # Removing the symlink removes the link, not what it points to; writing over one
        # replaces the link with a file of the volume's own.
        assert (
            await alice.delete("/volumes/links/files", params={"path": "up"})
        ).status_code == 200
        kept = await alice.get("/volumes/links/files", params={"path": "real/file"})
        assert kept.content == b"kept\n"
        over = await alice.put("/volumes/links/files", params={"path": "pw"}, content=b"mine")
        assert over.status_code == 200, over.text
        entries = (await alice.get("/volumes/links/entries", params={"path": "/"})).json()
        kinds = {e["name"]: e["type"] for e in entries["entries"]}
        assert kinds == {"etc": "symlink", "pw": "file", "real": "dir", "root": "symlink"}
        seen = await sh(
            alice, {"volumes": [{"name": "links", "path": "/data"}]}, "cat /data/pw; echo"
        )
        assert seen["stdout"].startswith("mine")
