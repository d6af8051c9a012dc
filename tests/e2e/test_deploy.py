"""deploy/ (issue 16): the server's image builds on the sandbox image's base, and
deploy/docker-compose.yml (run by Debian's docker-compose) starts it with the Docker socket,
builds the sandbox image through it, and serves a create and a command; the server runs as a
non-root user and its healthcheck turns healthy."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
from deploy.build import build_server_image

from insien_sandbox import Sandbox
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
TAG = "insien-server:test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def compose(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """(url, api key, project) of the compose deployment, torn down afterwards."""
    require_tool("docker-compose", "apt-get install docker-compose")
    build_server_image(docker_client, TAG)
    folder = tmp_path_factory.mktemp("compose")
    (folder / "tenants.toml").write_text((ROOT / "deploy" / "tenants.toml").read_text())
    project = f"insien-test-{secrets.token_hex(3)}"
    key = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "INSIEN_API_KEY": key,
        "INSIEN_SERVER_IMAGE": TAG,
        "INSIEN_TENANTS_FILE": str(folder / "tenants.toml"),
        "INSIEN_PUBLISHED_PORT": str(port),
        "INSIEN_INSTANCE": project,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-f", str(COMPOSE_FILE), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    started = run("up", "-d")
    try:
        assert started.returncode == 0, started.stderr
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the compose server never answered:\n{run('logs').stdout[-4000:]}")
            time.sleep(0.5)
        yield url, key, project
    finally:
        stopped = run("down", "-v", "--remove-orphans")
        left = docker_client.containers.list(
            all=True, filters={"label": f"insien.instance={project}"}
        )
        for container in left:
            container.remove(force=True)
        assert stopped.returncode == 0, stopped.stderr


def test_compose_serves_a_sandbox(
    compose: tuple[str, str, str], docker_client: docker.DockerClient
) -> None:
    url, key, project = compose
    with Sandbox(api_key=key, base_url=url) as box:
        assert box.commands.run("echo hi from compose").stdout == "hi from compose\n"
        assert box.commands.run("id -u").stdout.strip() != "0"
    (server,) = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={project}", "status": "running"}
    )
    assert server.attrs["Config"]["User"] == "10001:10001"
    uid = server.exec_run(["id", "-u"]).output
    assert isinstance(uid, bytes)
    assert json.loads(uid) == 10001
    deadline = time.monotonic() + 60
    while server.attrs["State"].get("Health", {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, server.attrs["State"].get("Health")
        time.sleep(1)
        server.reload()
    (builder,) = docker_client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                "com.docker.compose.service=sandbox-image",
            ]
        },
    )
    assert builder.attrs["State"]["ExitCode"] == 0
