"""No program of the image runs as the agent (issue 31). The agent is root in its sandbox, the
only process there that is: it used to run on the image's /usr/bin/python3, and to find libc
by running the image's /sbin/ldconfig, so an image (a tenant's template) that replaced either
ran its own code as the agent. Now the agent runs on the runtime in its read-only volume and
takes libc from its own interpreter; the image's programs run as the user, when asked."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import docker
import pytest

from insien_sandbox import Sandbox
from tests.conftest import IMAGE, Server, start_server, stop_server

TRAPPED = "insien-test-trapped:latest"
MARKER = "/tmp/ran-as"
TRAP = f'#!/bin/sh\necho "$0 $(id -u)" >> {MARKER}\n'


def _trapped_image(client: docker.DockerClient) -> None:
    """The default image with python3 and ldconfig replaced by programs that say who ran them."""
    files = {
        "usr/bin/python3": TRAP + 'exec /usr/bin/python3.11 "$@"\n',
        "sbin/ldconfig": TRAP,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(text.encode()))
    container = client.containers.create(IMAGE, ["true"], network_mode="none")
    try:
        container.put_archive("/", buffer.getvalue())  # never started: into its filesystem
        repository, _, tag = TRAPPED.partition(":")
        container.commit(repository=repository, tag=tag)
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def trapped_server(docker_client: docker.DockerClient) -> Iterator[Server]:
    _trapped_image(docker_client)
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
        # The trap is live: run as the user, python3 says so (uid 1000).
        assert box.commands.run("python3 -c 'print(1)'").stdout == "1\n"
        ran = box.commands.run(f"cat {MARKER}").stdout.splitlines()
        assert ran == ["/usr/bin/python3 1000"], ran
