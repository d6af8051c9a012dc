"""The agent, delivered to every sandbox by a read-only volume instead of a copy per create.

Copying the agent's zip application into each new container (`put_archive`) cost a cold
create about 40 ms. Instead, one Docker volume per agent build, named after the zip's digest,
holds it, and every sandbox mounts it read-only at the agent's directory: nothing inside a
sandbox can write to what another sandbox reads (the mount is read-only, and sandboxes have
no capability to remount). Snapshots do not carry the agent either: volumes are not committed.
Volumes of older builds are left in place: another server on the same Docker host may still
be using one.

The volume also carries the Python runtime the agent runs on (`agent_runtime`), so a sandbox
image needs no python3 of its own: `entrypoint` says how a container starts the agent.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import PurePosixPath

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from .. import agent_runtime
from ..base import AGENT_DIR, AGENT_PATH, DEFAULT_PYTHON, LABEL_PREFIX

LABEL_AGENT = f"{LABEL_PREFIX}agent"
"""On agent volumes: the digest of the agent and runtime they hold."""


def contents(agent_zip: bytes) -> dict[str, tuple[bytes, int]]:
    """What the volume holds, by path relative to the agent's folder: the agent's zip and, where
    this host can provide one, the runtime it runs on."""
    files = {PurePosixPath(AGENT_PATH).name: (agent_zip, 0o644)}
    bundle = agent_runtime.bundle()
    if bundle is not None:
        files.update(bundle.files)
    return files


def _digest(agent_zip: bytes) -> str:
    digest = hashlib.sha256(agent_zip)
    bundle = agent_runtime.bundle()
    if bundle is not None:
        digest.update(bundle.digest.encode())
    return digest.hexdigest()


def volume_name(agent_zip: bytes) -> str:
    return f"insien-agent-{_digest(agent_zip)[:20]}"


def _brought(python: str) -> agent_runtime.Bundle | None:
    """The runtime the agent starts on, if any: none where this host cannot provide one, or
    where the operator named another interpreter than the default (INSIEN_AGENT_PYTHON or a
    template's `python`): the agent then runs on that one of the image's, as it used to."""
    if python != DEFAULT_PYTHON:
        return None
    return agent_runtime.bundle()


def entrypoint(python: str) -> list[str]:
    """How a container starts the agent: on the brought runtime, through its own loader (the
    image's libc and python3 play no part), or on the image's `python`."""
    bundle = _brought(python)
    if bundle is None:
        return [python, "-I", "-S", AGENT_PATH]
    return bundle.command(AGENT_PATH)


LOADER_VARIABLES = ("LD_", "GLIBC_TUNABLES")
"""What the dynamic loader reads from the environment (LD_PRELOAD and LD_AUDIT load code)."""


def environment(client: docker.DockerClient, image: str, python: str) -> dict[str, str]:
    """The agent's settings that go with `entrypoint`: which loader runs it (to start its
    helper the same way) and the image's python3 (for code contexts). User commands never see
    them: the agent leaves every `INSIEN_AGENT_*` variable out of their environment.

    Docker gives the container the image's own environment too, and an `LD_PRELOAD` there
    would load the image's code into the root agent: the loader's variables are set blank, and
    their values go to the agent as data, for user commands (which get them as the image set
    them)."""
    bundle = _brought(python)
    env = {agent_runtime.PYTHON_ENV: python}
    if bundle is not None:
        env[agent_runtime.LOADER_ENV] = bundle.loader
    image_env: list[str] = client.images.get(image).attrs["Config"].get("Env") or []
    loader = {
        name: value
        for name, _, value in (entry.partition("=") for entry in image_env)
        if name.startswith(LOADER_VARIABLES)
    }
    if loader:
        env.update(dict.fromkeys(loader, ""))
        env[agent_runtime.IMAGE_ENV] = json.dumps(loader)
    return env


def agent_mount(name: str) -> Mount:
    """How a sandbox sees the agent volume: read-only, and never filled from the image."""
    return Mount(AGENT_DIR, name, type="volume", read_only=True, no_copy=True)


STAMP = f"{AGENT_DIR}/complete.sha256"
"""Written after everything else, with the digest of what the volume holds."""


def _read(container: Container, path: str) -> bytes | None:
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return member.read() if member is not None else None
    except (docker.errors.NotFound, tarfile.TarError, IndexError):
        return None


def _holds(client: docker.DockerClient, image: str, name: str, agent_zip: bytes) -> bool:
    """Whether the volume holds exactly this agent, and all of its runtime: the stamp is
    written last, so a fill cut short leaves none (reading back the whole runtime, 17 MB,
    would cost every server start a few hundred ms)."""
    container = client.containers.create(
        image, command=["true"], mounts=[agent_mount(name)], network_mode="none"
    )
    try:
        return (
            _read(container, AGENT_PATH) == agent_zip
            and _read(container, STAMP) == _digest(agent_zip).encode()
        )
    finally:
        container.remove(force=True)


def _fill(client: docker.DockerClient, image: str, name: str, agent_zip: bytes) -> None:
    """Write the agent into the volume through a container that is never started."""
    writable = Mount(AGENT_DIR, name, type="volume", read_only=False, no_copy=True)
    container = client.containers.create(
        image, command=["true"], mounts=[writable], network_mode="none"
    )
    try:
        container.put_archive(AGENT_DIR, agent_runtime.archive(contents(agent_zip)))
        stamp = {PurePosixPath(STAMP).name: (_digest(agent_zip).encode(), 0o644)}
        container.put_archive(AGENT_DIR, agent_runtime.archive(stamp))
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
    """The name of a volume holding this agent (and its runtime), made and filled if it is not
    there yet (a container of `image`, never started, does the writing; any image will do, even
    one with no shell). Blocking: call in a thread."""
    name = volume_name(agent_zip)
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels={LABEL_AGENT: name.removeprefix("insien-agent-")})
    if not _holds(client, image, name, agent_zip):
        _fill(client, image, name, agent_zip)
        if not _holds(client, image, name, agent_zip):
            raise docker.errors.DockerException(f"volume {name} does not keep the agent")
    return name
