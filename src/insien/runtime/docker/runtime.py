"""`Runtime` on the Docker Engine: docker-py in trio worker threads, and a native attach whose
frames are decoded here, so the link sees plain stdout and stderr.

Long because it is the whole Docker runtime: the required core and each capability it offers
(pause, snapshots, image store and builds, volumes, the bulk socket's directories) over one
client; its self-contained parts are modules of their own (`attach`, `frames`, `agent_volume`,
`images`, `builds`, `engine`). Next seam: the bulk directories into a module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import docker
import docker.errors
import requests.exceptions
import trio
from docker.models.containers import Container
from docker.types import LogConfig, Mount, Ulimit

from ..base import (
    AGENT_ENVIRONMENT,
    LABEL_INSTANCE,
    LABEL_PREFIX,
    VOLUME_JOB_MOUNT,
    ContainerInfo,
    ContainerSpec,
    ImageBuild,
    ImageInfo,
    ImageNotFound,
    RuntimeFailure,
    StreamCorrupt,
    StreamKind,
    Usage,
    VolumeInfo,
    VolumeJob,
    VolumeJobResult,
    VolumeMount,
)
from . import agent_volume, builds
from .attach import attach
from .frames import FrameDecoder, FramingError
from .frames import StreamKind as DockerStream

LABEL_VOLUME_JOB = f"{LABEL_PREFIX}volume-job"
"""On a volume job's container (never an instance's sandbox): the volume it works on."""
VOLUME_JOB_MEMORY = 256 * 1024 * 1024
VOLUME_JOB_PIDS = 64
STOP_GRACE = 2
"""Seconds a stopped sandbox's processes get between SIGTERM and SIGKILL."""
BULK_MOUNT = "/run/insien/bulk"
"""Where a sandbox's bulk directory is mounted (the agent's bulk.BULK_DIR)."""
BULK_SOCKET = "agent.sock"
BULK_ROOT = "/run/insien-bulk"
"""The host directory that holds each sandbox's bulk directory (INSIEN_BULK_DIR overrides)."""
MAX_SOCKET_PATH = 100
"""A Unix socket's path must fit in sun_path (108 bytes on Linux)."""

log = logging.getLogger("insien.runtime")


def bulk_directory(root: Path, sandbox_id: str) -> Path | None:
    """A new sandbox's bulk directory on the host, mode 0700 (only the server, and root in
    the container, can enter it), or None where it cannot be made: stdio carries everything."""
    folder = root / sandbox_id
    if len(str(folder / BULK_SOCKET)) > MAX_SOCKET_PATH:
        log.warning("no bulk sockets: %s is too long a path for a Unix socket", folder)
        return None
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        log.warning("no bulk socket for sandbox %s: %s", sandbox_id, exc)
        return None
    return folder


def volume_mount(mount: VolumeMount) -> Mount:
    """A tenant's volume in a sandbox: never filled from the image (an empty volume stays
    empty), read-only when asked."""
    return Mount(mount.path, mount.volume, type="volume", read_only=mount.read_only, no_copy=True)


class DockerChannel:
    """The agent's stdio over Docker's attach: stdin as written, stdout and stderr decoded from
    Docker's 8-byte frame headers (the link never sees them)."""

    def __init__(self, stream: trio.abc.Stream, bulk_socket: str | None = None) -> None:
        self._stream = stream
        self.bulk_socket = bulk_socket
        """The host path of the agent's bulk socket (`runtime.base.BulkCapable`)."""
        self._decoder = FrameDecoder()
        self._pieces: list[tuple[StreamKind, bytes]] = []

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def receive(self) -> tuple[StreamKind, bytes] | None:
        while not self._pieces:
            data = await self._stream.receive_some()
            if not data:
                return None
            try:
                self._pieces = [
                    (StreamKind.STDERR if kind is DockerStream.STDERR else StreamKind.STDOUT, piece)
                    for kind, piece in self._decoder.feed(bytes(data))
                ]
            except FramingError as exc:
                raise StreamCorrupt(str(exc)) from exc
        return self._pieces.pop(0)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


def remaps_users(info: Mapping[str, Any]) -> bool:
    """Whether the engine behind `docker info` remaps user namespaces (`userns-remap`): its
    containers' root is then an unprivileged uid on the host. Read from what the engine says
    (`SecurityOptions` lists `name=userns`), never assumed from configuration files."""
    options = info.get("SecurityOptions") or []
    return any(isinstance(option, str) and "name=userns" in option.split(",") for option in options)


def _socket_path(base_url: str) -> str:
    parsed = urlparse(base_url)
    if parsed.scheme in ("unix", "http+unix", "http+docker"):
        # docker-py rewrites unix:///path into http+docker://localhost and keeps the path apart.
        host = os.environ.get("DOCKER_HOST", "")
        if host.startswith("unix://"):
            return host.removeprefix("unix://")
        return "/var/run/docker.sock"
    raise RuntimeFailure(f"Insien needs Docker over a unix socket; DOCKER_HOST is {base_url!r}")


class DockerRuntime:
    """The only place that calls docker-py; every call runs in a worker thread. Implements the
    required core and every optional capability (`Pausable`, `Stoppable`, `Stats`, `ImageStore`,
    `FilesystemSnapshots`, `VolumeStore`, `ImageBuilder`)."""

    name = "Docker"
    attach_from_start = True

    def __init__(self, client: docker.DockerClient, users_remapped: bool = False) -> None:
        self._client = client
        self.users_remapped = users_remapped
        """The engine remaps user namespaces: root inside is unprivileged on the host."""
        self.socket_path = _socket_path(client.api.base_url)
        self._agent_zip: bytes | None = None
        self._agent_volume = ""
        self._agent_lock = trio.Lock()
        self._bulk_root = Path(os.environ.get("INSIEN_BULK_DIR") or BULK_ROOT)
        # Off unless asked for, until a whole CI run passes with it on (docs/protocol.md,
        # "The bulk socket").
        self._bulk_on = os.environ.get("INSIEN_BULK_SOCKET", "off").strip().lower() == "on"
        self._bulk_dirs: dict[str, Path] = {}
        """Each container's bulk directory on the host, as created or found on attach."""

    @classmethod
    async def connect(cls) -> DockerRuntime:
        def _connect() -> tuple[docker.DockerClient, bool]:
            client = docker.from_env()
            client.ping()
            return client, remaps_users(client.info())

        try:
            client, users_remapped = await trio.to_thread.run_sync(_connect)
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"cannot reach the Docker Engine: {exc}") from exc
        return cls(client, users_remapped)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(str(exc.explanation or exc)) from exc
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(str(exc)) from exc

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._client.version)
        return result

    async def _volume_for(self, agent_zip: bytes, image: str) -> str:
        """The read-only volume that carries this agent into sandboxes (made once)."""
        async with self._agent_lock:
            if self._agent_zip is not agent_zip:
                self._agent_volume = await self._call(
                    agent_volume.ensure, self._client, image, agent_zip
                )
                self._agent_zip = agent_zip
            return self._agent_volume

    async def create(self, spec: ContainerSpec, agent_zip: bytes) -> str:
        """Create the container, with the agent mounted read-only; returns the container id."""
        volume = await self._volume_for(agent_zip, spec.image)

        def _create() -> str:
            if not agent_volume.exists(self._client, volume):
                agent_volume.ensure(self._client, spec.image, agent_zip)
            container: Container = self._client.containers.create(
                spec.image,
                # The image's entrypoint, command, environment, working directory and user
                # are all overridden: a snapshot is made by a tenant, and none of it may
                # decide how the root agent starts (docker-init runs this, by absolute path).
                entrypoint=agent_volume.entrypoint(spec.python),
                command=[],
                labels=dict(spec.labels),
                environment={
                    **AGENT_ENVIRONMENT,
                    **spec.environment,
                    **agent_volume.environment(self._client, spec.image, spec.python),
                },
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
                # Docker's default seccomp profile stays on. Without no-new-privileges the
                # image's set-uid sudo becomes root: only where that root is unprivileged on the
                # host (runsc sets no_new_privs itself: there root comes from the agent alone).
                security_opt=[] if spec.root else ["no-new-privileges"],
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
                mounts=[
                    agent_volume.agent_mount(volume),
                    *(volume_mount(mount) for mount in spec.volumes),
                    *([Mount(BULK_MOUNT, str(bulk), type="bind")] if bulk else []),
                ],
            )
            return str(container.id)

        bulk = (
            await trio.to_thread.run_sync(bulk_directory, self._bulk_root, spec.sandbox_id)
            if self._bulk_on
            else None
        )
        try:
            result: str = await self._call(_create)
        except BaseException:
            if bulk is not None:
                shutil.rmtree(bulk, ignore_errors=True)
            raise
        if bulk is not None:
            self._bulk_dirs[result] = bulk
        return result

    async def attach(self, container_id: str) -> DockerChannel:
        bulk = self._bulk_dirs.get(container_id)
        if bulk is None:
            bulk = await self._find_bulk_directory(container_id)
        socket = str(bulk / BULK_SOCKET) if bulk is not None else None
        return DockerChannel(await attach(self.socket_path, container_id), socket)

    async def _find_bulk_directory(self, container_id: str) -> Path | None:
        """The bulk directory of a container this process did not create (a restarted
        server recovering it), made again if it is gone (the host rebooted)."""

        def _find() -> Path | None:
            folder = self._bulk_source(self._client.api.inspect_container(container_id))
            if folder is not None:
                self._remake(folder)
            return folder

        folder: Path | None = await self._call(_find)
        if folder is not None:
            self._bulk_dirs[container_id] = folder
        return folder

    def _remake(self, folder: Path) -> None:
        """A bulk directory gone with /run (the host rebooted), made again as it was."""
        with contextlib.suppress(OSError):
            self._bulk_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)

    def _bulk_source(self, info: Mapping[str, Any]) -> Path | None:
        """The host directory of a container's bulk mount, if it is one of ours (nothing
        outside the bulk root is ever made or removed)."""
        for mount in info.get("Mounts") or []:
            if mount.get("Destination") == BULK_MOUNT and mount.get("Type") == "bind":
                source = Path(str(mount.get("Source")))
                if source.parent == self._bulk_root:
                    return source
        return None

    async def start(self, container_id: str) -> None:
        bulk = self._bulk_dirs.get(container_id)

        def _start() -> None:
            if bulk is not None:
                self._remake(bulk)  # a bind's source must exist at every start
            self._client.api.start(container_id)

        await self._call(_start)

    async def remove(self, container_id: str) -> None:
        """Remove the container, running or not; a container already gone is not an error."""

        bulk = self._bulk_dirs.pop(container_id, None)

        def _remove() -> None:
            nonlocal bulk
            if bulk is None:  # one this process never attached (it ended while we were down)
                with contextlib.suppress(docker.errors.NotFound):
                    bulk = self._bulk_source(self._client.api.inspect_container(container_id))
            try:
                self._client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # Removal already under way (a concurrent destroy) counts as done.
                if exc.status_code != 409:
                    raise
            if bulk is not None:
                shutil.rmtree(bulk, ignore_errors=True)

        await self._call(_remove)

    async def rename(self, container_id: str, name: str) -> None:
        """Only the server can rename a container: what a pooled sandbox's name says about its
        owner cannot be changed from inside it (labels cannot change at all)."""
        await self._call(self._client.api.rename, container_id, name)

    async def pause(self, container_id: str) -> None:
        await self._call(self._client.api.pause, container_id)

    async def unpause(self, container_id: str) -> None:
        await self._call(self._client.api.unpause, container_id)

    async def stop(self, container_id: str) -> None:
        """Stop the container, its writable layer kept (`Stoppable`): docker-init passes the
        SIGTERM on, and whatever is left after STOP_GRACE seconds is killed."""

        def _stop() -> None:
            self._client.api.stop(container_id, timeout=STOP_GRACE)

        await self._call(_stop)

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

    async def usage(self, container_id: str) -> Usage | None:
        """One cgroup reading through Docker's stats (`one_shot`: no second sample waited for)."""

        def _stats() -> dict[str, Any] | None:
            try:
                stats: dict[str, Any] = self._client.api.stats(
                    container_id, stream=False, one_shot=True
                )
            except docker.errors.NotFound:
                return None
            return stats

        stats = await self._call(_stats)
        if not stats or not stats.get("pids_stats"):
            return None  # stopped: Docker answers with zeroes
        cpu = stats.get("cpu_stats") or {}
        memory = stats.get("memory_stats") or {}
        details = memory.get("stats") or {}
        cache = int(details.get("inactive_file", details.get("cache", 0)) or 0)
        return Usage(
            cpu_seconds=int((cpu.get("cpu_usage") or {}).get("total_usage", 0)) / 1e9,
            cpus=float(cpu.get("online_cpus") or os.cpu_count() or 1),
            memory_used=max(0, int(memory.get("usage", 0)) - cache),
            memory_limit=int(memory.get("limit", 0)),
            memory_cache=cache,
            pids=int((stats.get("pids_stats") or {}).get("current", 0)),
        )

    async def images_labelled(self, label: str) -> list[ImageInfo]:
        """Images carrying `label` (`name` or `name=value`)."""

        def _list() -> list[ImageInfo]:
            found: list[dict[str, Any]] = self._client.api.images(filters={"label": label})
            return [
                ImageInfo(
                    tags=tuple(image.get("RepoTags") or ()),
                    labels=dict(image.get("Labels") or {}),
                    created=float(image.get("Created") or 0),
                )
                for image in found
            ]

        images: list[ImageInfo] = await self._call(_list)
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

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        def _inspect() -> dict[str, Any] | None:
            try:
                info: dict[str, Any] = self._client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            return info

        found: dict[str, Any] | None = await self._call(_inspect)
        if found is None:
            return None
        state = found.get("State") or {}
        host = found.get("HostConfig") or {}
        return ContainerInfo(
            id=str(found["Id"]),
            name=str(found.get("Name", "")).lstrip("/"),
            labels=dict((found.get("Config") or {}).get("Labels") or {}),
            running=bool(state.get("Running")),
            paused=bool(state.get("Paused")),
            oom_killed=bool(state.get("OOMKilled")),
            gone=state.get("Status") in ("removing", "dead"),
            cpus=(host.get("NanoCpus") or 0) / 1e9 or None,
            memory=int(host["Memory"]) if host.get("Memory") else None,
            pids=int(host["PidsLimit"]) if host.get("PidsLimit") else None,
            oci_runtime=host.get("Runtime"),
            network=host.get("NetworkMode"),
        )

    async def list_sandboxes(self, instance: str) -> list[str]:
        """Ids of the containers (any state) this Insien instance labelled as its sandboxes."""

        def _list() -> list[str]:
            found: list[dict[str, Any]] = self._client.api.containers(
                all=True, filters={"label": [f"{LABEL_INSTANCE}={instance}"]}
            )
            return [str(container["Id"]) for container in found]

        result: list[str] = await self._call(_list)
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

    # -- ImageBuilder ---------------------------------------------------------------------------

    async def build_image(self, build: ImageBuild, output: Callable[[str], None]) -> str:
        """A template build through the engine's builder (`builds.build`). Cancelling it (the
        server stopping) does not wait for the build: the thread is left to end with it."""
        try:
            image_id: str = await trio.to_thread.run_sync(
                builds.build, self._client, build, output, abandon_on_cancel=True
            )
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(str(exc)) from exc
        return image_id

    async def tag_image(self, image: str, repository: str, tag: str) -> None:
        def _tag() -> None:
            if not self._client.api.tag(image, repository, tag, force=True):
                raise RuntimeFailure(f"the Docker Engine did not tag {image} as {repository}:{tag}")

        await self._call(_tag)

    async def image_size(self, name: str) -> int:
        def _size() -> int:
            try:
                return int(self._client.images.get(name).attrs.get("Size") or 0)
            except docker.errors.ImageNotFound:
                return 0

        size: int = await self._call(_size)
        return size

    # -- VolumeStore ----------------------------------------------------------------------------

    async def create_volume(
        self, name: str, labels: Mapping[str, str], device: str | None = None
    ) -> None:
        options = {"type": "ext4", "device": device} if device is not None else None
        await self._call(
            lambda: self._client.api.create_volume(
                name, driver="local", driver_opts=options, labels=dict(labels)
            )
        )

    async def volumes_labelled(self, label: str) -> list[VolumeInfo]:
        def _list() -> list[VolumeInfo]:
            found = self._client.api.volumes(filters={"label": label}).get("Volumes") or []
            return [
                VolumeInfo(name=str(item["Name"]), labels=dict(item.get("Labels") or {}))
                for item in found
            ]

        volumes: list[VolumeInfo] = await self._call(_list)
        return volumes

    async def remove_volume(self, name: str) -> None:
        def _remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._client.api.remove_volume(name)

        await self._call(_remove)

    async def volume_users(self, name: str) -> list[str]:
        def _users() -> list[str]:
            found = self._client.api.containers(all=True, filters={"volume": name})
            return [str(container["Id"]) for container in found]

        users: list[str] = await self._call(_users)
        return users

    async def run_volume_job(self, job: VolumeJob) -> VolumeJobResult:
        """Create a container with the volume at `VOLUME_JOB_MOUNT` (no network, no
        capabilities but CHOWN for a root job, small limits), unpack the inbox, run the
        program, keep its stdout and the outbox, and remove the container."""

        def _run() -> VolumeJobResult:
            root = job.user.split(":")[0] in ("0", "root")
            container: Container = self._client.containers.create(
                job.image,
                entrypoint=list(job.command[:1]),
                command=list(job.command[1:]),
                labels={LABEL_VOLUME_JOB: job.volume},
                environment=AGENT_ENVIRONMENT,
                user=job.user,
                working_dir="/",
                detach=True,
                network_mode="none",
                runtime=job.runtime,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                cap_add=["CHOWN"] if root else [],
                log_config=LogConfig(type=LogConfig.types.JSON),
                mem_limit=VOLUME_JOB_MEMORY,
                memswap_limit=VOLUME_JOB_MEMORY,
                pids_limit=VOLUME_JOB_PIDS,
                mounts=[Mount(VOLUME_JOB_MOUNT, job.volume, type="volume", no_copy=True)],
            )
            try:
                if job.inbox is not None and not container.put_archive("/", job.inbox):
                    raise RuntimeFailure("the volume job's input was not accepted")
                container.start()
                try:
                    status = container.wait(timeout=job.timeout)
                except requests.exceptions.RequestException as exc:
                    raise RuntimeFailure(f"the volume job took more than {job.timeout:g}s") from exc
                output = container.logs(stdout=True, stderr=False)
                errors = container.logs(stdout=False, stderr=True, tail=20)
                archive = None
                if job.outbox is not None and status.get("StatusCode") == 0:
                    archive = self._outbox(container, job.outbox)
                code = int(status.get("StatusCode", -1))
                return VolumeJobResult(code, output, errors, archive)
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)

        result: VolumeJobResult = await self._call(_run)
        return result

    @staticmethod
    def _outbox(container: Container, path: str) -> IO[bytes] | None:
        """The tar archive of `path` in a temporary file, None when the job left none there
        (it refused the operation). Blocking."""
        archive = tempfile.TemporaryFile()  # noqa: SIM115 (the caller's to close)
        try:
            chunks, _ = container.get_archive(path)
            for chunk in chunks:
                archive.write(chunk)
        except docker.errors.NotFound:
            archive.close()
            return None
        except BaseException:
            archive.close()
            raise
        archive.seek(0)
        return archive

    def close(self) -> None:
        self._client.close()
