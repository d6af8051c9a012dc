"""Shared fixtures: a real Docker Engine, the sandbox image, and a real `insien serve`.

Every container a test run creates carries an `insien.instance` label starting with this run's
prefix; the suite fails if any of them outlives it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Generator, Iterator, Sequence

import docker
import docker.errors
import pytest

from tests.server_process import IMAGE, Server, rss_bytes, stop_server
from tests.server_process import start_server as launch

__all__ = ["IMAGE", "Server", "instance_name", "rss_bytes", "start_server", "stop_server"]

# tests/k8s needs the cluster tests/k8s/cluster.sh brings up, and runs inside its network
# namespace: `nox -s k8s` (which sets INSIEN_K8S) runs it, the main suite leaves it out.
collect_ignore_glob = [] if os.environ.get("INSIEN_K8S") else ["k8s/*"]

RUN_PREFIX = f"pytest-{secrets.token_hex(4)}"


def instance_name(suffix: str) -> str:
    return f"{RUN_PREFIX}-{suffix}"


def start_server(
    extra_env: dict[str, str] | None = None, suffix: str = "main"
) -> tuple[subprocess.Popen[bytes], Server]:
    return launch(instance_name(suffix), extra_env)


DOCKER_SUITES = ("e2e", "attacks")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Generator[None, None, None]:
    """Everything under tests/e2e and tests/attacks drives real containers: mark it `docker`
    before pytest's `-m` filter runs (inside this wrapper), so `-m "not docker"` leaves it out.

    A test marked `anyio` runs once per backend (`anyio_backend`): pytest-trio's trio mode,
    which claims every async test, lets go of it after pytest-trio's own hook has run."""
    for item in items:
        if any(part in DOCKER_SUITES for part in item.path.parts):
            item.add_marker(pytest.mark.docker)
    yield  # pytest's -k/-m deselection and pytest-trio's marking
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]


DESELECTED = pytest.StashKey[list[pytest.Item]]()
"""What this run's filters took out: tests/unit/test_suite_selection.py checks a fast-suite
run's own selection with it instead of collecting the container suites a second time."""


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    for item in items:
        item.config.stash.setdefault(DESELECTED, []).append(item)


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The SDK serves asyncio and trio users alike: its async tests run under both."""
    return str(request.param)


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
    from insien.tooling.images import build_image

    build_image(client, tag=IMAGE)
    yield client
    leftovers = _our_containers(client)
    for container_id in leftovers:
        client.api.remove_container(container_id, force=True)
    client.close()
    if leftovers:
        pytest.fail(f"{len(leftovers)} sandbox container(s) outlived the test run")


@pytest.fixture(scope="session")
def interpreter_image(docker_client: docker.DockerClient) -> str:
    """The code interpreter's image (matplotlib, numpy, pandas from Debian), built once."""
    from insien.tooling.images import INTERPRETER_TAG, build_interpreter_image

    build_interpreter_image(docker_client, tag=INTERPRETER_TAG, default_tag=IMAGE)
    return INTERPRETER_TAG


@pytest.fixture(scope="session")
def server(docker_client: docker.DockerClient) -> Iterator[Server]:
    process, info = start_server()
    yield info
    code = stop_server(process)
    assert code == 0, f"insien serve exited with {code}:\n{info.log()[-4000:]}"
