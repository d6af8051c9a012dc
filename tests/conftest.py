"""Shared fixtures: a real Docker Engine, the sandbox image, and a real `insien serve`.

Every container a test run creates carries an `insien.instance` label starting with this run's
prefix; the suite fails if any of them outlives it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

RUN_PREFIX = f"pytest-{secrets.token_hex(4)}"
IMAGE = os.environ.get("INSIEN_TEST_IMAGE", "insien-sandbox:latest")
LISTENING = re.compile(r"Insien listening on (http://\S+)")


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    instance: str
    log_path: Path
    pid: int

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _our_containers(client: docker.DockerClient) -> list[str]:
    found = client.api.containers(all=True, filters={"label": ["insien.instance"]})
    return [c["Id"] for c in found if c["Labels"].get("insien.instance", "").startswith(RUN_PREFIX)]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a running Docker Engine: {exc}")
    from insien.images import build_image

    build_image(client, tag=IMAGE)
    yield client
    leftovers = _our_containers(client)
    for container_id in leftovers:
        client.api.remove_container(container_id, force=True)
    client.close()
    if leftovers:
        pytest.fail(f"{len(leftovers)} sandbox container(s) outlived the test run")


def instance_name(suffix: str) -> str:
    return f"{RUN_PREFIX}-{suffix}"


def start_server(
    extra_env: dict[str, str] | None = None, suffix: str = "main"
) -> tuple[subprocess.Popen[bytes], Server]:
    api_key = secrets.token_urlsafe(24)
    instance = instance_name(suffix)
    log_path = Path(tempfile.mkstemp(prefix=f"insien-{suffix}-", suffix=".log")[1])
    env = {
        **os.environ,
        "INSIEN_API_KEY": api_key,
        "INSIEN_JWT_SECRET": secrets.token_urlsafe(32),
        "INSIEN_INSTANCE": instance,
        "INSIEN_HOST": "127.0.0.1",
        "INSIEN_PORT": "0",
        "INSIEN_AGENT_IMAGE": IMAGE,
        "INSIEN_LOG_LEVEL": "info",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "insien", "serve", "--no-build"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # keep a developer's .env out of the tests
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return process, Server(match.group(1), api_key, instance, log_path, process.pid)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"insien serve did not start:\n{log_path.read_text(errors='replace')}")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="session")
def server(docker_client: docker.DockerClient) -> Iterator[Server]:
    process, info = start_server()
    yield info
    code = stop_server(process)
    assert code == 0, f"insien serve exited with {code}:\n{info.log()[-4000:]}"
