"""Build the server's image (deploy/Dockerfile) on the base the sandbox image uses: Debian's
bookworm-slim when it can be pulled, else the one made from Debian's packages.

Insien and its dependencies are installed here, on the host, into deploy/.build/site (uv, for
Debian bookworm's Python 3.11 and glibc 2.36), and copied into the image: the build needs no
package index, and whatever lets this machine reach one (a proxy, its certificates) need not
be taught to Docker.

    python deploy/build.py [--tag insien-server:latest]     # what `nox -s deploy-image` runs
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import docker
from rich.console import Console

from insien.tooling.images import ImageBuildError, choose_base, follow_build

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / ".build" / "site"
TAG = "insien-server:latest"
PYTHON = "3.11"
GLIBC = "2_36"
"""Debian bookworm's python3 and glibc: the wheels chosen must run on them."""


def stage_site(console: Console) -> None:
    """Insien and its dependencies, installed for the image into SITE."""
    uv = shutil.which("uv")
    if uv is None:
        raise ImageBuildError("uv is needed to stage the server's packages (pip install uv)")
    shutil.rmtree(SITE, ignore_errors=True)
    console.print(f"[bold]Staging[/] Insien for Python {PYTHON} in {SITE.relative_to(ROOT)} …")
    result = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--target",
            str(SITE),
            "--python-version",
            PYTHON,
            "--python-platform",
            f"{platform.machine()}-manylinux_{GLIBC}",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildError(f"uv could not stage the packages:\n{result.stderr[-3000:]}")
    shutil.rmtree(SITE / "bin", ignore_errors=True)  # scripts for this machine's Python


def build_server_image(client: docker.DockerClient, tag: str = TAG) -> str:
    """Build (Docker's cache makes a rebuild of unchanged sources quick); returns the base."""
    console = Console(stderr=True)
    stage_site(console)
    base = choose_base(client, console)
    console.print(f"[bold]Building {tag}[/] on {base} …")
    stream = client.api.build(
        path=str(ROOT),
        dockerfile="deploy/Dockerfile",
        tag=tag,
        buildargs={"BASE": base},
        rm=True,
        forcerm=True,
        decode=True,
    )
    follow_build(stream, tag, console)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tag", default=TAG)
    args = parser.parse_args(argv)
    try:
        build_server_image(docker.from_env(), args.tag)
    except ImageBuildError as exc:
        print(f"deploy/build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
