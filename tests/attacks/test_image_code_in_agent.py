"""No code of the image runs as the agent (issue 31). The agent is root in its sandbox, the
only process there that is: it used to run on the image's /usr/bin/python3, to find libc by
running the image's /sbin/ldconfig, and to start with the image's environment, so an image (a
tenant's template) that replaced either program, set `LD_PRELOAD` or named a module of its
own in /etc/nsswitch.conf ran its own code as the agent. Now the agent runs on the runtime in
its read-only volume, takes libc from its own interpreter, starts with the loader's variables
blank and reads accounts from /etc/passwd as data; the image's programs, `LD_PRELOAD` and NSS
modules still apply to user commands, as the image says."""

from __future__ import annotations

import io
import platform
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from insien_sandbox import Sandbox
from tests.conftest import IMAGE, Server, start_server, stop_server

TRAPPED = "insien-test-trapped:latest"
MARKER = "/tmp/ran-as"
TRAP = f'#!/bin/sh\necho "$0 $(id -u)" >> {MARKER}\n'
PRELOAD = "/usr/local/lib/trap.so"
TRAP_C = f"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void trap(void) {{
    FILE *marker = fopen("{MARKER}", "a");
    if (marker) {{ fprintf(marker, "trap %d\\n", (int)getuid()); fclose(marker); }}
}}
"""


def _trap_library(tmp: Path) -> bytes:
    """A library that says who loaded it, built with the host's C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the LD_PRELOAD library")
    (tmp / "trap.c").write_text(TRAP_C)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(tmp / "trap.so"), str(tmp / "trap.c")],
        check=True,
    )
    return (tmp / "trap.so").read_bytes()


def _trapped_image(client: docker.DockerClient, library: bytes) -> None:
    """The default image with python3 and ldconfig replaced by programs that say who ran them,
    and `LD_PRELOAD` and /etc/nsswitch.conf naming a library that does the same."""
    files = {
        "usr/bin/python3": (TRAP + 'exec /usr/bin/python3.11 "$@"\n').encode(),
        "sbin/ldconfig": TRAP.encode(),
        PRELOAD.lstrip("/"): library,
        f"usr/lib/{platform.machine()}-linux-gnu/libnss_trap.so.2": library,
        "etc/nsswitch.conf": b"passwd: trap files\ngroup: trap files\nhosts: files dns\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644 if name.startswith("etc/") else 0o755
            tar.addfile(info, io.BytesIO(data))
    container = client.containers.create(IMAGE, ["true"], network_mode="none")
    try:
        container.put_archive("/", buffer.getvalue())  # never started: into its filesystem
        repository, _, tag = TRAPPED.partition(":")
        container.commit(repository=repository, tag=tag, changes=[f"ENV LD_PRELOAD={PRELOAD}"])
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def trapped_server(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    _trapped_image(docker_client, _trap_library(tmp_path_factory.mktemp("trap")))
    process, info = start_server({"INSIEN_TEMPLATES": TRAPPED}, suffix="trapped")
    yield info
    assert stop_server(process) == 0
    docker_client.images.remove(TRAPPED, force=True)


def test_the_images_programs_never_run_as_the_agent(trapped_server: Server) -> None:
    server = trapped_server
    with Sandbox(api_key=server.api_key, base_url=server.url, template=TRAPPED) as box:
        # Every way the agent starts work: commands, file requests in each of its file
        # threads, a terminal, a background process.
        assert box.commands.run("echo", ["hi"]).stdout == "hi\n"
        for i in range(8):
            box.files.write(f"f{i}.txt", str(i))
            assert box.files.read(f"f{i}.txt") == str(i)
        box.commands.run("sleep 0.1", background=True).wait()
        # Listing files names their owners: looked up by the agent.
        assert {e.name for e in box.files.list(".")} >= {"f0.txt"}
        # The traps are live: for the user, as the image says.
        assert box.commands.run("echo $LD_PRELOAD").stdout == f"{PRELOAD}\n"
        assert box.commands.run("python3 -c 'print(1)'").stdout == "1\n"
        ran = set(box.commands.run(f"cat {MARKER}").stdout.splitlines())
        assert ran == {"trap 1000", "/usr/bin/python3 1000"}, ran
