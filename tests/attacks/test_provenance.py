"""What a tenant can influence never decides ownership, pool membership or how the agent starts
(issue 18, V1 and V2).

V1: a snapshot inherits its container's labels, so a sandbox made from a snapshot of a pooled
sandbox looked pooled to a restarted server, which then handed it, with its owner's processes,
to another tenant. V2: create's `env` was the container's environment, so `PATH` chose which
`python3` ran as root in place of the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio

from insien.runtime.base import DEFAULT_PYTHON
from insien.runtime.docker import agent_volume
from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server
from tests.e2e.helpers import call, containers_of, websocket
from tests.e2e.restartable import Restartable
from tests.e2e.test_pool import wait_for_pool


def tenants_file(path: Path, keys: dict[str, str]) -> Path:
    path.write_text(
        "\n".join(
            f'[tenants.{name}]\nkeys = [{{ id = "{name}-key", sha256 = "{hash_key(key)}" }}]\n'
            for name, key in keys.items()
        )
    )
    return path


@asynccontextmanager
async def as_tenant(server: Server, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"X-API-Key": key}, timeout=60
    ) as client:
        yield client


async def run(agent_url: str, script: str) -> dict[str, Any]:
    async with websocket(agent_url) as ws:
        message = {"id": 1, "type": "exec", "cmd": "sh", "args": ["-c", script]}
        return await call(ws, message, timeout=60)


def test_a_snapshot_of_a_pooled_sandbox_never_reaches_another_tenant(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    keys = {"alpha": new_key(), "beta": new_key()}
    env = {
        "INSIEN_TENANTS_FILE": str(tenants_file(tmp_path / "tenants.toml", keys)),
        "INSIEN_API_KEY": "",
        "INSIEN_POOL_SIZE": "1",
    }
    restartable = Restartable("provenance")
    server = restartable.start(**env)
    instance = server.instance
    alpha_ids: list[str] = []
    try:

        async def alpha_plants_a_trojan() -> str:
            await wait_for_pool(server, 1)
            async with as_tenant(server, keys["alpha"]) as alpha:
                first = (await alpha.post("/sandbox/create")).raise_for_status().json()
                alpha_ids.append(first["sandboxId"])
                (container,) = containers_of(docker_client, first["sandboxId"])
                assert container["Labels"]["insien.pool"], "the first create came from the pool"
                planted = await run(
                    first["agentUrl"], "echo alpha-secret > /home/user/trojan && sleep 1"
                )
                assert planted["exitCode"] == 0, planted
                snapshot = (
                    await alpha.post(f"/sandbox/{first['sandboxId']}/snapshot")
                ).raise_for_status()
                template = str(snapshot.json()["template"])
                for _ in range(2):
                    made = await alpha.post("/sandbox/create", json={"template": template})
                    assert made.status_code == 200, made.text
                    alpha_ids.append(made.json()["sandboxId"])
                return template

        template = trio.run(alpha_plants_a_trojan)
        image_labels = docker_client.images.get(template).labels
        assert image_labels["insien.pool"] == ""  # blanked at commit
        assert image_labels["insien.seal"] == ""
        for sandbox_id in alpha_ids[1:]:
            (container,) = containers_of(docker_client, sandbox_id)
            assert container["Labels"]["insien.pool"] == ""  # set at create, not inherited
        # A container forged to look like a pooled sandbox of this instance: no seal.
        forged = docker_client.containers.run(
            template,
            entrypoint=["sleep", "600"],
            labels={
                "insien.instance": instance,
                "insien.pool": "anything",
                "insien.sandbox.id": "forged",
                "insien.owner": "",
                "insien.created-at": "2026-01-01T00:00:00.000Z",
                "insien.template": template,
                "insien.timeout": "600.0",
            },
            detach=True,
        )
        assert restartable.stop() == 0
        server = restartable.start(**env)
        assert "1 refused" in server.log(), server.log()
        with pytest.raises(docker.errors.NotFound):
            forged.reload()

        async def after_restart() -> None:
            async with as_tenant(server, keys["alpha"]) as alpha:
                listed = (await alpha.get("/sandboxes", params={"state": "running"})).json()
                assert sorted(s["sandboxId"] for s in listed["sandboxes"]) == sorted(alpha_ids)
            await wait_for_pool(server, 1)
            async with as_tenant(server, keys["beta"]) as beta:
                for _ in range(3):
                    made = (await beta.post("/sandbox/create")).raise_for_status().json()
                    assert made["sandboxId"] not in alpha_ids
                    looked = await run(made["agentUrl"], "cat /home/user/trojan")
                    assert looked["exitCode"] != 0, looked
                    await beta.post(f"/sandbox/{made['sandboxId']}/destroy")

        trio.run(after_restart)
        assert restartable.stop() == 0
    finally:
        if restartable.process is not None and restartable.process.poll() is None:
            restartable.kill()
        restartable.start(INSIEN_SHUTDOWN_ENDS_SANDBOXES="true", **env)
        assert restartable.stop() == 0
        for image in docker_client.images.list(name="insien-snapshot"):
            if image.labels.get("insien.snapshot.source") in alpha_ids:
                docker_client.images.remove(str(image.id), force=True)


def agent_environment(client: docker.DockerClient, container_id: str) -> dict[str, str]:
    """The agent process's environment, read from the host (the tests run as root there)."""
    top = client.api.top(container_id, ps_args="-o pid,comm,args")
    (pid,) = [int(row[0]) for row in top["Processes"] if row[1] == "insien-agent"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(entry.split("=", 1) for entry in environ.split("\0") if "=" in entry)


async def test_create_env_reaches_commands_never_the_agent(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as rest:
        first = (await rest.post("/sandbox/create")).raise_for_status().json()
        # a python3 of the user's own, first in the PATH the attacker asks for
        trojan = (
            "mkdir -p /home/user/.b && printf '#!/bin/sh\\ntouch /tmp/owned\\n"
            'exec /usr/bin/python3 "$@"\\n\' > /home/user/.b/python3 && '
            "chmod +x /home/user/.b/python3"
        )
        assert (await run(first["agentUrl"], trojan))["exitCode"] == 0
        template = (
            (await rest.post(f"/sandbox/{first['sandboxId']}/snapshot"))
            .raise_for_status()
            .json()["template"]
        )
        hostile_env = {
            "PATH": "/home/user/.b:/usr/bin:/bin",
            "LD_PRELOAD": "/home/user/.b/evil.so",
            "PYTHONPATH": "/home/user/.b",
            "PYTHONSTARTUP": "/home/user/.b/start.py",
        }
        made = await rest.post("/sandbox/create", json={"template": template, "env": hostile_env})
        second = made.raise_for_status().json()
        try:
            seen = await run(second["agentUrl"], "echo $PATH; echo $LD_PRELOAD; ls /tmp")
            # the variables reach user commands, as asked
            assert seen["stdout"].splitlines()[:2] == [hostile_env["PATH"], "/home/user/.b/evil.so"]
            assert "owned" not in seen["stdout"], "the user's python3 ran"
            (container,) = containers_of(docker_client, second["sandboxId"])
            agent_env = agent_environment(docker_client, container["Id"])
            safe_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            assert agent_env.get("PATH") == safe_path, agent_env
            assert not set(agent_env) & {"LD_PRELOAD", "PYTHONPATH", "PYTHONSTARTUP"}, agent_env
            config = docker_client.api.inspect_container(container["Id"])["Config"]
            # the agent starts by absolute paths alone: its runtime's loader and interpreter
            assert config["Entrypoint"] == agent_volume.entrypoint(DEFAULT_PYTHON)
            assert config["Entrypoint"][0].startswith("/opt/insien/")
            assert f"PATH={hostile_env['PATH']}" not in config["Env"]
            assert not [e for e in config["Env"] if e.startswith(("LD_", "PYTHON"))]
        finally:
            for created in (first, second):
                await rest.post(f"/sandbox/{created['sandboxId']}/destroy")
            docker_client.images.remove(template, force=True)


def test_env_reaches_commands_of_a_pooled_sandbox_too(docker_client: docker.DockerClient) -> None:
    restartable = Restartable("pooled-env")
    server = restartable.start(INSIEN_POOL_SIZE="1", INSIEN_SHUTDOWN_ENDS_SANDBOXES="true")
    try:

        async def scenario() -> None:
            await wait_for_pool(server, 1)
            async with httpx.AsyncClient(
                base_url=server.url, headers=server.headers, timeout=60
            ) as rest:
                made = await rest.post("/sandbox/create", json={"env": {"GREETING": "hej"}})
                created = made.raise_for_status().json()
                (container,) = containers_of(docker_client, created["sandboxId"])
                assert container["Labels"]["insien.pool"], "it came from the pool"
                reply = await run(created["agentUrl"], "echo $GREETING")
                assert reply["stdout"] == "hej\n"

        trio.run(scenario)
    finally:
        assert restartable.stop() == 0
