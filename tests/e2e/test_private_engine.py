"""`insien serve` where no Docker Engine answers (DOCKER_HOST names a missing socket): as root
with dockerd installed it starts a private dockerd (data, exec root, pid file and socket under
XDG_CACHE_HOME), says so in one line, runs sandboxes on it and stops it when it stops, while
the system engine goes on untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from insien.runtime.docker.engine import PrivateDockerd
from insien_sandbox import Sandbox
from tests.conftest import IMAGE, start_server, stop_server
from tests.tools import missing, require_tool


@pytest.fixture
def cache() -> Iterator[Path]:
    """A short XDG_CACHE_HOME: containerd's sockets live under the private exec root."""
    made = Path(tempfile.mkdtemp(prefix="insien-engine-", dir="/tmp"))
    yield made
    shutil.rmtree(made, ignore_errors=True)


def dockerd_or_skip() -> str:
    if os.geteuid() != 0:
        missing("root, which a private dockerd needs", "run the suite as root, as CI does")
    return require_tool("dockerd", "apt-get install docker.io")


def test_serve_runs_on_a_private_dockerd_it_starts_and_stops(
    docker_client: docker.DockerClient, cache: Path
) -> None:
    engine = PrivateDockerd(dockerd_or_skip(), cache / "insien" / "dockerd")
    bridge_before = Path("/sys/class/net/docker0").exists()
    # A private engine starts empty and building the image there (debootstrap) takes minutes:
    # load the system engine's copy into its data root first, through the same class.
    with engine.running(lambda _: None):
        with subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE) as save:
            loaded = subprocess.run(
                ["docker", "--host", engine.url, "load", "--quiet"],
                stdin=save.stdout,
                capture_output=True,
                timeout=180,
                check=False,
            )
        assert save.returncode == 0
        assert loaded.returncode == 0, loaded.stderr
    assert not engine.socket.exists()

    process, server = start_server(
        {"DOCKER_HOST": f"unix://{cache}/missing/docker.sock", "XDG_CACHE_HOME": str(cache)},
        suffix="private-engine",
    )
    try:
        said = [line for line in server.log().splitlines() if "private dockerd" in line]
        assert said == [
            f"insien: no Docker Engine answered; using a private dockerd at {engine.url} (data "
            f"in {engine.home / 'data'}), which stops with this service"
        ]
        pid = int(engine.pidfile.read_text())
        private = docker.DockerClient(base_url=engine.url)
        info = private.info()
        assert info["DockerRootDir"] == str(engine.home / "data")
        if shutil.which("runsc"):
            assert "runsc" in info["Runtimes"]
        with Sandbox(api_key=server.api_key, base_url=server.url) as box:
            assert (
                box.commands.run("echo on the private engine").stdout == "on the private engine\n"
            )
            label: dict[str, str | list[str] | bool] = {
                "label": f"insien.instance={server.instance}"
            }
            assert len(private.containers.list(filters=label)) == 1
            assert docker_client.containers.list(all=True, filters=label) == []
        private.close()
    finally:
        code = stop_server(process, timeout=90)
    assert code == 0, server.log()[-4000:]
    # The service stopped its dockerd before it exited, and left the system engine alone.
    assert not Path(f"/proc/{pid}").exists()
    assert not engine.socket.exists()
    assert docker_client.ping()
    # ... its bridge included (a dockerd without one, in the host's network, deleted it)
    assert Path("/sys/class/net/docker0").exists() == bridge_before
