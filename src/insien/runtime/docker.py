"""Container lifecycle through docker-py, each blocking call in a trio worker thread."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import trio
from docker.models.containers import Container
from docker.types import LogConfig, Ulimit

from .attach import AttachedStream, attach

AGENT_DIR = "/opt/insien"
AGENT_PATH = f"{AGENT_DIR}/agent.pyz"
DEFAULT_PYTHON = "/usr/bin/python3"
AGENT_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
"""The agent's process starts with this and the agent's own settings; the sandbox's `env`
reaches user commands through the agent, never the container's environment."""

DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")
"""What the agent (root inside the sandbox) keeps of Docker's default set; everything else,
NET_RAW, MKNOD, SYS_CHROOT, SETFCAP, AUDIT_WRITE and NET_BIND_SERVICE among it, is dropped."""

LABEL_PREFIX = "insien."
LABEL_SANDBOX_ID = "insien.sandbox.id"
LABEL_OWNER = "insien.owner"
LABEL_INSTANCE = "insien.instance"
LABEL_CREATED_AT = "insien.created-at"
LABEL_TEMPLATE = "insien.template"
LABEL_TIMEOUT = "insien.timeout"
LABEL_IDLE_TIMEOUT = "insien.idle-timeout"
LABEL_METADATA = "insien.metadata"
LABEL_POOL = "insien.pool"
LABEL_SEAL = "insien.seal"


class DockerError(Exception):
    """The Docker Engine refused an operation (bad image, daemon down, …)."""


class ImageNotFound(DockerError):
    """The sandbox image is not present locally."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one sandbox container."""

    sandbox_id: str
    image: str
    owner: str
    instance: str
    created_at: str
    template: str
    workdir: str = "/home/user"
    network_mode: str = "none"
    runtime: str | None = None
    mem_limit: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    tmp_size: str = "256m"
    disk_limit: str | None = None
    nofile: int = 4096
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """What a restarted server needs to rebuild the sandbox's record (lifetime, metadata)."""
    python: str = DEFAULT_PYTHON
    """The absolute path of the interpreter that runs the agent (never looked up in PATH)."""

    def labels(self) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_SANDBOX_ID: self.sandbox_id,
            LABEL_OWNER: self.owner,
            LABEL_INSTANCE: self.instance,
            LABEL_CREATED_AT: self.created_at,
            LABEL_TEMPLATE: self.template,
        }


def _socket_path(base_url: str) -> str:
    parsed = urlparse(base_url)
    if parsed.scheme in ("unix", "http+unix", "http+docker"):
        # docker-py rewrites unix:///path into http+docker://localhost and keeps the path apart.
        host = os.environ.get("DOCKER_HOST", "")
        if host.startswith("unix://"):
            return host.removeprefix("unix://")
        return "/var/run/docker.sock"
    raise DockerError(f"Insien needs Docker over a unix socket; DOCKER_HOST is {base_url!r}")


def _tar_one_file(path: str, data: bytes, mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("/".join(parts))
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class DockerRuntime:
    """The only place that calls docker-py; every call runs in a worker thread."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self.socket_path = _socket_path(client.api.base_url)

    @classmethod
    async def connect(cls) -> DockerRuntime:
        def _connect() -> docker.DockerClient:
            client = docker.from_env()
            client.ping()
            return client

        try:
            client = await trio.to_thread.run_sync(_connect)
        except docker.errors.DockerException as exc:
            raise DockerError(f"cannot reach the Docker Engine: {exc}") from exc
        return cls(client)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(str(exc.explanation or exc)) from exc
        except docker.errors.DockerException as exc:
            raise DockerError(str(exc)) from exc

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._client.version)
        return result

    async def create(self, spec: ContainerSpec, agent_zip: bytes) -> str:
        """Create the container and copy the agent into it; returns the container id."""
        archive = _tar_one_file(AGENT_PATH, agent_zip)

        def _create() -> str:
            container: Container = self._client.containers.create(
                spec.image,
                # The image's entrypoint, command, environment, working directory and user
                # are all overridden: a snapshot is made by a tenant, and none of it may
                # decide how the root agent starts (docker-init runs this, by absolute path).
                entrypoint=[spec.python, "-I", "-S", AGENT_PATH],
                command=[],
                labels=spec.labels(),
                environment={**AGENT_ENVIRONMENT, **spec.environment},
                working_dir=spec.workdir,
                # The agent runs as root whatever the image's USER says, so that it can run user
                # code as an unprivileged user that cannot reach it.
                user="0:0",
                # docker-py sets StdinOnce unless detached, and a restarted server must be
                # able to attach again, so: detached, stdin open.
                detach=True,
                stdin_open=True,
                tty=False,
                init=True,
                log_config=LogConfig(type=LogConfig.types.NONE),
                network_mode=spec.network_mode,
                runtime=spec.runtime,
                security_opt=["no-new-privileges"],  # Docker's default seccomp profile stays on
                cap_drop=["ALL"],
                cap_add=list(spec.capabilities),
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.tmp_size},mode=1777"},
                ulimits=[
                    Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
                    Ulimit(name="core", soft=0, hard=0),
                ],
                storage_opt={"size": spec.disk_limit} if spec.disk_limit else None,
                mem_limit=spec.mem_limit,
                memswap_limit=spec.mem_limit,  # no swap on top of the memory limit
                nano_cpus=spec.nano_cpus,
                pids_limit=spec.pids_limit,
            )
            try:
                container.put_archive("/", archive)
            except BaseException:
                container.remove(force=True)
                raise
            return str(container.id)

        result: str = await self._call(_create)
        return result

    async def attach(self, container_id: str) -> AttachedStream:
        return await attach(self.socket_path, container_id)

    async def start(self, container_id: str) -> None:
        await self._call(self._client.api.start, container_id)

    async def remove(self, container_id: str) -> None:
        """Remove the container, running or not; a container already gone is not an error."""

        def _remove() -> None:
            try:
                self._client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # Removal already under way (a concurrent destroy) counts as done.
                if exc.status_code != 409:
                    raise

        await self._call(_remove)

    async def rename(self, container_id: str, name: str) -> None:
        """Only the server can rename a container: what a pooled sandbox's name says about its
        owner cannot be changed from inside it (labels cannot change at all)."""
        await self._call(self._client.api.rename, container_id, name)

    async def pause(self, container_id: str) -> None:
        await self._call(self._client.api.pause, container_id)

    async def unpause(self, container_id: str) -> None:
        await self._call(self._client.api.unpause, container_id)

    async def commit(
        self, container_id: str, repository: str, tag: str, labels: dict[str, str]
    ) -> str:
        """Save the container's filesystem as an image; returns the image id."""

        def _commit() -> str:
            # Docker copies the container's labels into the image; labels cannot be removed
            # by a commit, so every `insien.*` one is blanked (a create sets its own anyway).
            found = self._client.api.inspect_container(container_id)["Config"]["Labels"] or {}
            blanked = {name: "" for name in found if name.startswith(LABEL_PREFIX)}
            result: dict[str, Any] = self._client.api.commit(
                container_id, repository=repository, tag=tag, conf={"Labels": {**blanked, **labels}}
            )
            return str(result["Id"])

        image_id: str = await self._call(_commit)
        return image_id

    async def writable_size(self, container_id: str) -> int:
        """Bytes in the container's writable layer (what a commit of it would add)."""

        def _size() -> int:
            found = self._client.api.containers(all=True, filters={"id": container_id}, size=True)
            return int(found[0].get("SizeRw") or 0) if found else 0

        size: int = await self._call(_size)
        return size

    async def images_labelled(self, label: str) -> list[dict[str, Any]]:
        """Images carrying `label` (`name` or `name=value`), as Docker lists them."""

        def _list() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = self._client.api.images(filters={"label": label})
            return found

        images: list[dict[str, Any]] = await self._call(_list)
        return images

    async def remove_image(self, name: str) -> None:
        """Untag and remove an image (layers a child image or a container uses stay until they
        go); an image already gone is not an error."""

        def _remove() -> None:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self._client.api.remove_image(name, force=True)

        await self._call(_remove)

    async def image_labels(self, name: str) -> dict[str, str] | None:
        """An image's labels, or None when there is no such image."""

        def _labels() -> dict[str, str] | None:
            try:
                image = self._client.images.get(name)
            except docker.errors.ImageNotFound:
                return None
            return dict(image.labels or {})

        labels: dict[str, str] | None = await self._call(_labels)
        return labels

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        def _inspect() -> dict[str, Any] | None:
            try:
                info: dict[str, Any] = self._client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            return info

        result: dict[str, Any] | None = await self._call(_inspect)
        return result

    async def list_sandboxes(self, instance: str) -> list[dict[str, Any]]:
        """Containers (any state) that this Insien instance labelled as its sandboxes."""

        def _list() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = self._client.api.containers(
                all=True, filters={"label": [f"{LABEL_INSTANCE}={instance}"]}
            )
            return found

        result: list[dict[str, Any]] = await self._call(_list)
        return result

    async def image_exists(self, name: str) -> bool:
        def _exists() -> bool:
            try:
                self._client.images.get(name)
            except docker.errors.ImageNotFound:
                return False
            return True

        result: bool = await self._call(_exists)
        return result

    def close(self) -> None:
        self._client.close()
