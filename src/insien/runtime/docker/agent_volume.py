"""The agent, delivered to every sandbox by a read-only volume instead of a copy per create.

Copying the agent's zip application into each new container (`put_archive`) cost a cold
create about 40 ms. Instead, one Docker volume per agent build, named after the zip's digest,
holds it, and every sandbox mounts it read-only at the agent's directory: nothing inside a
sandbox can write to what another sandbox reads (the mount is read-only, and sandboxes have
no capability to remount). Snapshots do not carry the agent either: volumes are not committed.
Volumes of older builds are left in place (a few hundred KiB each): another server on the same
Docker host may still be using one.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import docker
import docker.errors
from docker.types import Mount

from ..base import AGENT_DIR, AGENT_PATH, LABEL_PREFIX

LABEL_AGENT = f"{LABEL_PREFIX}agent"
"""On agent volumes: the digest of the agent they hold."""


def volume_name(agent_zip: bytes) -> str:
    return f"insien-agent-{hashlib.sha256(agent_zip).hexdigest()[:20]}"


def agent_mount(name: str) -> Mount:
    """How a sandbox sees the agent volume: read-only, and never filled from the image."""
    return Mount(AGENT_DIR, name, type="volume", read_only=True, no_copy=True)


def _archive(agent_zip: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(AGENT_PATH.rsplit("/", 1)[1])
        info.size = len(agent_zip)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(agent_zip))
    return buffer.getvalue()


def _holds(client: docker.DockerClient, image: str, name: str, agent_zip: bytes) -> bool:
    """Whether the volume holds exactly this agent (a fill cut short leaves it without)."""
    container = client.containers.create(
        image, command=["true"], mounts=[agent_mount(name)], network_mode="none"
    )
    try:
        stream, _ = container.get_archive(AGENT_PATH)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return member is not None and member.read() == agent_zip
    except (docker.errors.NotFound, tarfile.TarError, IndexError):
        return False
    finally:
        container.remove(force=True)


def _fill(client: docker.DockerClient, image: str, name: str, agent_zip: bytes) -> None:
    """Write the agent into the volume through a container that is never started."""
    writable = Mount(AGENT_DIR, name, type="volume", read_only=False, no_copy=True)
    container = client.containers.create(
        image, command=["true"], mounts=[writable], network_mode="none"
    )
    try:
        container.put_archive(AGENT_DIR, _archive(agent_zip))
    finally:
        container.remove(force=True)


def exists(client: docker.DockerClient, name: str) -> bool:
    """Whether the volume is still there (an operator's `docker volume prune` removes it when
    no sandbox is running; Docker would then make an empty one for the next create)."""
    try:
        client.api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    return True


def ensure(client: docker.DockerClient, image: str, agent_zip: bytes) -> str:
    """The name of a volume holding this agent, made and filled if it is not there yet (a
    container of `image`, never started, does the writing). Blocking: call in a thread."""
    name = volume_name(agent_zip)
    digest = hashlib.sha256(agent_zip).hexdigest()
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels={LABEL_AGENT: digest})
    if not _holds(client, image, name, agent_zip):
        _fill(client, image, name, agent_zip)
        if not _holds(client, image, name, agent_zip):
            raise docker.errors.DockerException(f"volume {name} does not keep the agent")
    return name
