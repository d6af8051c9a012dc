"""The trust boundary of E2B's Volume API (issue 32): its control routes (`/e2b/volumes`) and
content routes (`/e2b/volumecontent/...`, the upload streamed outside Quart included) open
with the tenant's API key only (as `X-API-Key`, or as the volume token the SDKs send as a
bearer), never with a sandbox's envd or traffic token; and one tenant cannot see, read,
write, remove, delete or mount another's volume, by its id or its name. Before, every one of
these routes answered 501."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server
from tests.volume_disks import remove_volumes

TENANTS = ("alice", "mallory")


@dataclass
class Two:
    server: Server
    keys: dict[str, str]

    def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
        url = f"{self.server.url}/e2b{path}"
        return httpx.request(method, url, headers=headers, timeout=60, **kw)

    def key(self, name: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[name]}


@pytest.fixture(scope="module")
def two(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Two]:
    path: Path = tmp_path_factory.mktemp("e2b-volumes") / "tenants.toml"
    keys = {name: new_key() for name in TENANTS}
    path.write_text(
        "".join(
            f'[tenants.{name}]\nkeys = [{{ id = "{name}-key", '
            f'sha256 = "{hash_key(keys[name])}" }}]\n'
            for name in TENANTS
        )
    )
    env = {"INSIEN_TENANTS_FILE": str(path), "INSIEN_API_KEY": ""}
    process, server = start_server(env, suffix="e2b-volumes")
    try:
        yield Two(server, keys)
    finally:
        assert stop_server(process) == 0, server.log()[-3000:]
        remove_volumes(docker_client, server.instance)


def content_calls(ref: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every content call, against volume `ref` (the upload writes `planted`)."""
    base = f"/volumecontent/{ref}"
    return [
        ("GET", f"{base}/dir", {"params": {"path": "/"}}),
        ("POST", f"{base}/dir", {"params": {"path": "/planted-dir"}}),
        ("GET", f"{base}/path", {"params": {"path": "/secret.txt"}}),
        ("DELETE", f"{base}/path", {"params": {"path": "/secret.txt"}}),
        ("GET", f"{base}/file", {"params": {"path": "/secret.txt"}}),
        ("PUT", f"{base}/file", {"params": {"path": "/planted"}, "content": b"x"}),
    ]


def alices_volume(two: Two) -> dict[str, Any]:
    made = two.call(
        "POST", "/volumes", two.key("alice"), json={"name": f"a-{secrets.token_hex(3)}"}
    )
    assert made.status_code == 201, made.text
    volume = dict(made.json())
    bearer = {"Authorization": f"Bearer {volume['token']}"}
    wrote = two.call(
        "PUT",
        f"/volumecontent/{volume['volumeID']}/file",
        bearer,
        params={"path": "/secret.txt"},
        content=b"alice's",
    )
    assert wrote.status_code == 201, wrote.text
    return volume


def still_intact(two: Two, volume: dict[str, Any]) -> None:
    bearer = {"Authorization": f"Bearer {volume['token']}"}
    base = f"/volumecontent/{volume['volumeID']}"
    listed = two.call("GET", f"{base}/dir", bearer, params={"path": "/"})
    assert [e["name"] for e in listed.json()] == ["secret.txt"], listed.text
    read = two.call("GET", f"{base}/file", bearer, params={"path": "/secret.txt"})
    assert read.content == b"alice's"


def test_another_tenant_finds_no_volume_of_yours(two: Two) -> None:
    volume = alices_volume(two)
    try:
        mallory = two.key("mallory")
        assert two.call("GET", "/volumes", mallory).json() == []
        for ref in (volume["volumeID"], volume["name"]):
            for method in ("GET", "DELETE"):
                answer = two.call(method, f"/volumes/{ref}", mallory)
                assert answer.status_code == 404, (method, ref, answer.text)
            for carried in (mallory, {"Authorization": f"Bearer {two.keys['mallory']}"}):
                for method, path, kw in content_calls(ref):
                    answer = two.call(method, path, carried, **kw)
                    assert answer.status_code == 404, (method, path, answer.text)
            mounted = two.call(
                "POST",
                "/sandboxes",
                mallory,
                json={"templateID": "base", "volumeMounts": [{"name": ref, "path": "/data"}]},
            )
            assert mounted.status_code == 404, mounted.text
        # A name of its own is no way in: mallory's volume of the same name is another volume.
        same = two.call("POST", "/volumes", mallory, json={"name": volume["name"]})
        assert same.status_code == 201, same.text
        assert same.json()["volumeID"] != volume["volumeID"]
        assert two.call("DELETE", f"/volumes/{volume['name']}", mallory).status_code == 204
        still_intact(two, volume)
    finally:
        two.call("DELETE", f"/volumes/{volume['volumeID']}", two.key("alice"))


def test_a_sandbox_token_opens_no_volume_route(two: Two) -> None:
    alice = two.key("alice")
    volume = alices_volume(two)
    created = two.call("POST", "/sandboxes", alice, json={"templateID": "base"})
    assert created.status_code == 201, created.text
    tokens = [created.json()["envdAccessToken"], created.json()["trafficAccessToken"]]
    try:
        for token in tokens:
            for carried in (
                {"X-API-Key": token},
                {"Authorization": f"Bearer {token}"},
                {"X-Access-Token": token},
                {"E2b-Traffic-Access-Token": token},
            ):
                calls = [
                    ("GET", "/volumes", {}),
                    ("POST", "/volumes", {"json": {"name": "planted"}}),
                    ("GET", f"/volumes/{volume['volumeID']}", {}),
                    ("DELETE", f"/volumes/{volume['volumeID']}", {}),
                    *content_calls(volume["volumeID"]),
                ]
                for method, path, kw in calls:
                    answer = two.call(method, path, carried, **kw)
                    assert answer.status_code == 401, (method, path, carried.keys(), answer.text)
    finally:
        two.call("DELETE", f"/sandboxes/{created.json()['sandboxID']}", alice)
    still_intact(two, volume)
    assert [v["name"] for v in two.call("GET", "/volumes", alice).json()] == [volume["name"]]
    with contextlib.suppress(httpx.HTTPError):
        two.call("DELETE", f"/volumes/{volume['volumeID']}", alice)


def test_a_volume_token_opens_that_volumes_files_and_nothing_else(two: Two) -> None:
    # A volume's token is what users hand to code that should reach its files (E2B's pattern):
    # it must not be the tenant's key, nor open another volume or the control plane.
    alice = two.key("alice")
    volume = alices_volume(two)
    other = alices_volume(two)
    try:
        token = volume["token"]
        assert token != two.keys["alice"]
        bearer = {"Authorization": f"Bearer {token}"}
        for method, path, kw in content_calls(other["volumeID"]):
            answer = two.call(method, path, bearer, **kw)
            assert answer.status_code == 401, (method, path, answer.text)
        for method, path, kw in [
            ("GET", "/volumes", {}),
            ("POST", "/volumes", {"json": {"name": "planted"}}),
            ("GET", f"/volumes/{volume['volumeID']}", {}),
            ("DELETE", f"/volumes/{volume['volumeID']}", {}),
            ("POST", "/sandboxes", {"json": {"templateID": "base"}}),
            ("GET", "/v2/sandboxes", {}),
        ]:
            for carried in (bearer, {"X-API-Key": token}):
                answer = two.call(method, path, carried, **kw)
                assert answer.status_code == 401, (method, path, answer.text)
        still_intact(two, volume)  # while it opens its own volume's files
        still_intact(two, other)
        # The tenant's key still opens the content calls too.
        listed = two.call(
            "GET", f"/volumecontent/{volume['volumeID']}/dir", alice, params={"path": "/"}
        )
        assert listed.status_code == 200, listed.text
    finally:
        for made in (volume, other):
            two.call("DELETE", f"/volumes/{made['volumeID']}", alice)
