"""The agent reaches sandboxes through one read-only volume per agent build (issue 11): no
copy per create, nothing in a sandbox can write to it (not even root in the container), and
a volume that does not hold exactly this agent is filled again before any sandbox uses it."""

from __future__ import annotations

import hashlib

import docker

from insien._resources import agent_zipapp
from insien.runtime.base import AGENT_DIR, AGENT_PATH
from insien.runtime.docker import agent_volume
from tests.conftest import IMAGE, Server
from tests.e2e.helpers import containers_of, sandbox


async def test_sandboxes_mount_the_agent_read_only(
    server: Server, docker_client: docker.DockerClient
) -> None:
    async with sandbox(server) as created:
        (listed,) = containers_of(docker_client, created["sandboxId"])
        container = docker_client.containers.get(listed["Id"])
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == AGENT_DIR]
        assert mount["Type"] == "volume"
        assert mount["RW"] is False
        assert mount["Name"] == agent_volume.volume_name(agent_zipapp())
        # Root inside the container cannot write it either: the mount itself is read-only.
        result = container.exec_run(["sh", "-c", f"echo x > {AGENT_PATH}"], user="0")
        assert result.exit_code != 0
        assert b"Read-only file system" in result.output


def test_a_tampered_or_removed_agent_volume_is_made_again(
    docker_client: docker.DockerClient,
) -> None:
    agent = agent_zipapp() + b"\n"  # a build of its own, so no running server shares it
    name = agent_volume.volume_name(agent)
    try:
        assert agent_volume.ensure(docker_client, IMAGE, agent) == name
        writable = docker.types.Mount(AGENT_DIR, name, type="volume")
        docker_client.containers.run(
            IMAGE,
            ["sh", "-c", f"echo forged > {AGENT_PATH}"],
            mounts=[writable],
            network_mode="none",
            remove=True,
        )
        assert agent_volume.ensure(docker_client, IMAGE, agent) == name
        shown = docker_client.containers.run(
            IMAGE,
            ["sha256sum", AGENT_PATH],
            mounts=[agent_volume.agent_mount(name)],
            network_mode="none",
            remove=True,
        )
        assert shown.split()[0].decode() == hashlib.sha256(agent).hexdigest()
        # Removed (`docker volume prune` with no sandbox running): made and filled again.
        docker_client.volumes.get(name).remove()
        assert not agent_volume.exists(docker_client, name)
        assert agent_volume.ensure(docker_client, IMAGE, agent) == name
        assert agent_volume.exists(docker_client, name)
    finally:
        docker_client.volumes.get(name).remove()
