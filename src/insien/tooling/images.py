"""Building the sandbox images from their recipes in `images/` (`insien image build`), and
bootstrapping their Debian base with debootstrap when none can be pulled. Command-line tooling:
it talks to the Docker Engine with docker-py directly, and the server never imports it (the
runtime's own template builds are `runtime.base.ImageBuilder`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors
from rich.console import Console

from .._resources import images_dir

DockerClient = docker.DockerClient

DEFAULT_TAG = "insien-sandbox:latest"
INTERPRETER_TAG = "insien-interpreter:latest"
DEFAULT_BASE = "debian:bookworm-slim"
BOOTSTRAP_BASE = "insien-base:bookworm"
RECIPE_LABEL = "insien.recipe"


class ImageBuildError(Exception):
    """The sandbox image could not be built; the message says which step failed."""


def recipe_digest(recipe: Path, base: str | None = None) -> str:
    """A hash of every file in the recipe folder (and the base named, for an image built on
    another of ours): the image is current when its label matches."""
    digest = hashlib.sha256()
    if base is not None:
        digest.update(base.encode() + b"\0")
    for path in sorted(p for p in recipe.rglob("*") if p.is_file()):
        digest.update(path.relative_to(recipe).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_is_current(
    client: docker.DockerClient, tag: str, recipe: Path, base: str | None = None
) -> bool:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    labels: dict[str, str] = image.labels or {}
    return labels.get(RECIPE_LABEL) == recipe_digest(recipe, base)


def _have(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def choose_base(client: docker.DockerClient, console: Console, wanted: str = DEFAULT_BASE) -> str:
    """The wanted base if it is here or can be pulled; otherwise a bootstrapped Debian."""
    if _have(client, wanted):
        return wanted
    console.print(f"[bold]Pulling[/] {wanted} …")
    try:
        client.images.pull(wanted)
        return wanted
    except docker.errors.APIError as exc:
        console.print(f"[yellow]Cannot pull {wanted}[/] ({exc.explanation or exc}).")
    if _have(client, BOOTSTRAP_BASE):
        console.print(f"Using {BOOTSTRAP_BASE}, bootstrapped from Debian's packages earlier.")
        return BOOTSTRAP_BASE
    console.print(
        f"[bold]Making {BOOTSTRAP_BASE} from Debian's packages[/] "
        "(debootstrap minbase + python3, then docker import; about a minute)."
    )
    bootstrap_base(client, console)
    return BOOTSTRAP_BASE


def bootstrap_base(client: docker.DockerClient, console: Console) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "no base image can be pulled and debootstrap is not installed "
            "(apt-get install debootstrap), so the base cannot be made locally"
        )
    mirror = os.environ.get("INSIEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(prefix="insien-rootfs-") as workdir:
        rootfs = Path(workdir) / "rootfs"
        archive = Path(workdir) / "rootfs.tar"
        command = ["debootstrap", "--variant=minbase", "--include=python3", "bookworm"]
        with console.status("debootstrap bookworm …"):
            result = subprocess.run(
                [*command, str(rootfs), mirror], capture_output=True, text=True, check=False
            )
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-5:] + result.stderr.splitlines()[-5:])
            raise ImageBuildError(f"debootstrap failed ({result.returncode}):\n{tail}")
        with console.status("packing the root filesystem …"):
            subprocess.run(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], check=True
            )
        with console.status(f"docker import {BOOTSTRAP_BASE} …"):
            repository, tag = BOOTSTRAP_BASE.split(":")
            client.api.import_image_from_file(str(archive), repository=repository, tag=tag)
    console.print(f"[green]Made {BOOTSTRAP_BASE}.[/]")


def build_interpreter_image(
    client: docker.DockerClient,
    *,
    tag: str = INTERPRETER_TAG,
    default_tag: str = DEFAULT_TAG,
    force: bool = False,
    console: Console | None = None,
) -> bool:
    """Build the code interpreter's image (on the default one, built first if needed)
    unless it is current. Returns whether it built."""
    build_image(client, tag=default_tag, console=console)
    return build_image(
        client, tag=tag, base=default_tag, force=force, console=console, recipe="interpreter"
    )


def build_image(
    client: docker.DockerClient,
    *,
    tag: str = DEFAULT_TAG,
    base: str | None = None,
    force: bool = False,
    console: Console | None = None,
    recipe: str = "default",
) -> bool:
    """Build a sandbox image from its recipe in `images/` unless it is current. Returns
    whether it built."""
    console = console or Console(stderr=True)
    folder = images_dir() / recipe
    if not force and image_is_current(client, tag, folder, base):
        console.print(f"{tag} is up to date.")
        return False
    chosen_base = base or choose_base(client, console)
    console.print(f"[bold]Building {tag}[/] on {chosen_base} …")
    stream: Any = client.api.build(
        path=str(folder),
        tag=tag,
        buildargs={"BASE": chosen_base},
        labels={RECIPE_LABEL: recipe_digest(folder, base)},
        rm=True,
        forcerm=True,
        decode=True,
    )
    follow_build(stream, tag, console)
    return True


def follow_build(stream: Iterable[dict[str, Any]], tag: str, console: Console) -> None:
    """Follow a decoded `client.api.build` stream to its end: print each Dockerfile step,
    raise ImageBuildError with the engine's message on a failed one. The Docker Engine
    reports a failed build inside the stream, not as an exception of docker-py's."""
    with console.status(f"building {tag}") as status:
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(str(chunk["error"]).strip())
            line = str(chunk.get("stream", "")).rstrip()
            if line.startswith("Step "):
                console.print(f"  {line}")
                status.update(f"building {tag}: {line}")
    console.print(f"[green]Built {tag}.[/]")


def connect_client() -> docker.DockerClient:
    """A docker-py client for the command line's image builds; ImageBuildError if the Docker
    Engine cannot be reached."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"cannot reach the Docker Engine: {exc}") from None
    return client
