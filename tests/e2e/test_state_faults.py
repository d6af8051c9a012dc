"""State you can trust (issue 32): snapshots and pauses checked against a manifest, and the
faults that must never end in both "success" and missing bytes: ten pauses and resumes in a row
(E2B#884's scenario), a server killed mid-snapshot, the agent killed mid-upload, a full /tmp."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import httpx
import pytest
import trio
from e2b import Sandbox

from insien.sandboxes.provenance import Sealer, load_key
from insien.sandboxes.snapshots import MANIFEST_FOLDER
from tests.backends import docker_only
from tests.conftest import Server
from tests.e2e.helpers import call, http, kill_agent, sandbox, websocket
from tests.e2e.restartable import Restartable, restartable  # noqa: F401 (a fixture)
from tests.server_process import STATE_DIR

pytestmark = [pytest.mark.docker, docker_only("no pause, snapshots or docker exec on pods")]

MIB = 1024 * 1024


def manifest_path(template: str) -> Path:
    return Path(STATE_DIR) / MANIFEST_FOLDER / f"{template.split(':', 1)[1]}.json"


async def run(agent_url: str, script: str) -> dict[str, Any]:
    async with websocket(agent_url) as ws:
        return await call(ws, {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", script]})


async def running_count(client: httpx.AsyncClient) -> int:
    listed = (await client.get("/sandboxes")).json()["sandboxes"]
    return sum(1 for one in listed if one["state"] == "running")


def digests(sbx: Sandbox, folder: str) -> dict[str, str]:
    """`sha256sum` of every file in a sandbox's folder, by name."""
    listing = sbx.commands.run(f"cd {folder} && sha256sum *").stdout
    return {name: digest for digest, name in (line.split() for line in listing.splitlines())}


def test_ten_pauses_and_resumes_keep_every_file_byte_for_byte(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E2B#884: files written between pauses went missing after the second resume. Here
    every round adds a file and pauses (without memory every third time: a stop and a boot,
    checked against a manifest), and every file is there, byte for byte, after each resume."""
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    sbx = Sandbox.create(timeout=300)
    try:
        written: dict[str, str] = {}
        for round_ in range(10):
            content = os.urandom((18 * 1024 + 1) * (round_ + 1))  # past #1016's 18 KB too
            name = f"round-{round_}.bin"
            sbx.files.write(f"/home/user/rounds/{name}", content)
            written[name] = hashlib.sha256(content).hexdigest()
            assert sbx.pause(mode="filesystem" if round_ % 3 == 0 else None) is True
            sbx = Sandbox.connect(sbx.sandbox_id)  # raises if the manifest does not match
            assert digests(sbx, "/home/user/rounds") == written, f"after resume {round_ + 1}"
        assert bytes(sbx.files.read("/home/user/rounds/round-9.bin", format="bytes")) == content
    finally:
        sbx.kill()


async def test_a_snapshot_is_checked_against_its_manifest(
    server: Server, docker_client: docker.DockerClient
) -> None:
    content = os.urandom(300 * 1024)
    async with sandbox(server) as created, http(server) as client:
        put = await client.put(
            f"/sandbox/{created['sandboxId']}/files",
            params={"path": "/home/user/kept/a.bin"},
            content=content,
        )
        assert put.status_code == 200, put.text
        answer = await client.post(f"/sandbox/{created['sandboxId']}/snapshot")
        template = answer.raise_for_status().json()["template"]
    try:
        recorded = json.loads(manifest_path(template).read_text())
        entries = {path: rest for path, *rest in recorded["entries"]}
        assert entries["/home/user/kept/a.bin"] == [
            "f",
            len(content),
            hashlib.sha256(content).hexdigest(),
        ]
        async with http(server) as client:
            copy = await client.post("/sandbox/create", json={"template": template})
            assert copy.status_code == 200, copy.text
            got = await client.get(
                f"/sandbox/{copy.json()['sandboxId']}/files",
                params={"path": "/home/user/kept/a.bin"},
            )
            assert got.content == content
            await client.post(f"/sandbox/{copy.json()['sandboxId']}/destroy")

            # A manifest naming a file the image lacks, and another's content otherwise:
            # exactly what a snapshot that lost or changed bytes looks like at create.
            sealer = Sealer(load_key(None, Path(STATE_DIR)))
            body = {k: v for k, v in recorded.items() if k != "seal"}
            body["entries"] = [
                [path, kind, size, "0" * 64 if path.endswith("a.bin") else digest]
                for path, kind, size, digest in body["entries"]
            ] + [["/home/user/kept/ghost.txt", "f", 5, None]]
            manifest_path(template).write_text(json.dumps(sealer.seal_notes(template, body)))
            running = await running_count(client)
            refused = await client.post("/sandbox/create", json={"template": template})
            assert refused.status_code == 503, refused.text
            message = refused.json()["message"]
            assert "2 paths differ" in message, message
            assert "/home/user/kept/ghost.txt: missing" in message, message
            assert "/home/user/kept/a.bin: content differs" in message, message
            # The sandbox that did not match is gone, not handed out with fewer files.
            assert await running_count(client) == running

            # A manifest edited without the server's key is not believed.
            forged = {**body, "seal": recorded["seal"]}
            manifest_path(template).write_text(json.dumps(forged))
            refused = await client.post("/sandbox/create", json={"template": template})
            assert refused.status_code == 503
            assert "not this server's" in refused.json()["message"]

            deleted = await client.delete(f"/snapshots/{template}")
            assert deleted.status_code == 200, deleted.text
            assert not manifest_path(template).exists()  # the manifest goes with it
    finally:
        if docker_client.images.list(name=template):
            docker_client.images.remove(template, force=True)


def test_a_server_killed_mid_snapshot_leaves_it_whole_or_absent(
    restartable: Restartable,  # noqa: F811
    docker_client: docker.DockerClient,
) -> None:
    server = restartable.start()
    created = httpx.post(f"{server.url}/sandbox/create", headers=server.headers).json()
    sandbox_id = created["sandboxId"]
    # Many files: the manifest taken after the commit takes long enough to be killed in.
    made = trio.run(run, created["agentUrl"], "mkdir m && cd m && seq 8000 | xargs touch")
    assert made["exitCode"] == 0, made
    label = f"insien.snapshot.source={sandbox_id}"

    def snapshot() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            httpx.post(
                f"{server.url}/sandbox/{sandbox_id}/snapshot", headers=server.headers, timeout=60
            )

    taking = threading.Thread(target=snapshot, daemon=True)
    taking.start()
    deadline = time.monotonic() + 30
    while not (images := docker_client.images.list(filters={"label": label})):
        assert time.monotonic() < deadline, "the snapshot was never committed"
        time.sleep(0.02)
    restartable.kill()  # SIGKILL once the commit is there, mostly before its manifest is
    taking.join(10)
    (template,) = [t for t in images[0].tags if t.startswith("insien-snapshot:")]
    finished = manifest_path(template).exists()
    print(f"killed {'after' if finished else 'before'} the manifest was written")
    server = restartable.start()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        listed = [s["template"] for s in client.get("/snapshots").json()["snapshots"]]
        if finished:  # complete: listed, and a create from it verifies
            assert template in listed
            copy = client.post("/sandbox/create", json={"template": template})
            assert copy.status_code == 200, copy.text
            client.post(f"/sandbox/{copy.json()['sandboxId']}/destroy")
            client.delete(f"/snapshots/{template}")
            return
        # Unfinished: never listed nor created from, and removed.
        assert template not in listed
        refused = client.post("/sandbox/create", json={"template": template})
        assert refused.status_code == 400, refused.text
        deadline = time.monotonic() + 20
        while docker_client.images.list(filters={"label": label}):
            assert time.monotonic() < deadline, "the unfinished snapshot was not removed"
            time.sleep(0.2)


def test_an_agent_killed_mid_upload_is_reported_failed(
    server: Server, docker_client: docker.DockerClient
) -> None:
    created = httpx.post(f"{server.url}/sandbox/create", headers=server.headers).json()
    sandbox_id = created["sandboxId"]
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as raw:
        raw.sendall(
            f"PUT /sandbox/{sandbox_id}/files?path=cut.bin HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nX-API-Key: {server.api_key}\r\n"
            f"Content-Length: {64 * MIB}\r\n\r\n".encode()
        )
        raw.sendall(b"\x05" * (8 * MIB))
        deadline = time.monotonic() + 30
        while "cut.bin.insien-upload-" not in trio.run(run, created["agentUrl"], "ls -a")["stdout"]:
            assert time.monotonic() < deadline, "the upload never reached the sandbox"
            time.sleep(0.05)
        trio.run(kill_agent, docker_client, sandbox_id)

        def send_the_rest() -> None:
            with contextlib.suppress(OSError):
                for _ in range(56):
                    raw.sendall(b"\x05" * MIB)

        sender = threading.Thread(target=send_the_rest, daemon=True)
        sender.start()
        raw.settimeout(30)
        answer = b""
        with contextlib.suppress(ConnectionError):
            while b"\r\n" not in answer and (chunk := raw.recv(65536)):
                answer += chunk
        # An error status, or the connection dropped without one: never a success.
        status = answer.split(b" ", 2)[1] if answer else b"none"
        assert not status.startswith(b"2"), answer[:500]
        sender.join(10)
    with httpx.Client(base_url=server.url, headers=server.headers) as client:
        deadline = time.monotonic() + 20  # and the sandbox ended: nothing claims the file
        while client.get(f"/sandboxes/{sandbox_id}").json()["state"] != "ended":
            assert time.monotonic() < deadline, "the sandbox outlived its agent"
            time.sleep(0.1)


async def test_a_full_tmp_fails_uploads_clearly_and_keeps_nothing_half_written(
    server: Server,
) -> None:
    content = os.urandom(8 * MIB)
    async with sandbox(server) as created, http(server) as client:
        url = f"/sandbox/{created['sandboxId']}/files"
        # /tmp is a tmpfs of its own size: fill it, then leave 2 MiB of room.
        filled = await run(
            created["agentUrl"],
            "dd if=/dev/zero of=/tmp/fill bs=1M 2>/dev/null; truncate -s -2M /tmp/fill",
        )
        assert filled["exitCode"] == 0, filled
        refused = await client.put(url, params={"path": "/tmp/big.bin"}, content=content)
        assert refused.status_code in (413, 507), refused.text
        assert "space" in refused.json()["message"], refused.text
        left = await run(created["agentUrl"], "ls -a /tmp")
        assert "big.bin" not in left["stdout"], left  # neither the file nor its temporary
        # With room again, the same upload lands whole.
        await run(created["agentUrl"], "rm /tmp/fill")
        stored = await client.put(url, params={"path": "/tmp/big.bin"}, content=content)
        assert stored.status_code == 200, stored.text
        got = await client.get(url, params={"path": "/tmp/big.bin"})
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(content).digest()
