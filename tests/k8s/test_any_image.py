"""Any image makes a sandbox on pods too (issue 31): images with no python3 (a static busybox
alone, busybox on musl, Debian without python3, made as in tests/e2e/test_any_image.py but
straight in the cluster's own dockerd) run the agent on the runtime Insien brings. By default
it travels down the attach stream with the agent; with INSIEN_K8S_AGENT_RUNTIME_DIR the node
holds it (`stage`) and pods mount it read-only. Commands, files both ways, and a SIGKILLed
server that finds its pod again."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio

from insien.runtime import agent_runtime
from insien.runtime.kubernetes.runtime import staged_dir
from insien.runtime.kubernetes.stage import stage
from insien_sandbox import Sandbox
from tests.backends import K8S_RUN, KUBERNETES
from tests.conftest import Server, start_server, stop_server
from tests.e2e.restartable import Restartable
from tests.e2e.test_any_image import (
    BUSYBOX,
    GLIBC,
    MUSL,
    _add,
    _debian_package,
    _import,
    _rootfs,
    _without_python,
)
from tests.k8s.test_runtime import pods

IMAGES = [BUSYBOX, MUSL, GLIBC]
TEMPLATES = {"INSIEN_TEMPLATES": ",".join(IMAGES)}


@pytest.fixture(scope="module")
def node_images() -> Iterator[list[str]]:
    """The images, made in the node's dockerd (pods never pull here)."""
    client = docker.DockerClient(base_url=f"unix://{K8S_RUN}/docker.sock")
    debs = Path(tempfile.gettempdir()) / "insien-test-debs"
    busybox = _debian_package("busybox-static", debs) / "bin" / "busybox"
    musl = _debian_package("musl", debs)
    tar, buffer = _rootfs(busybox)
    _import(client, tar, buffer, BUSYBOX)
    tar, buffer = _rootfs(busybox)
    libc = (musl / "lib/x86_64-linux-musl/libc.so").read_bytes()
    _add(tar, "lib/ld-musl-x86_64.so.1", libc)
    _add(tar, "lib/libc.musl-x86_64.so.1", libc)
    _import(client, tar, buffer, MUSL)
    _without_python(client, busybox)
    yield IMAGES
    for tag in IMAGES:
        client.images.remove(tag, force=True)
    client.close()


@pytest.fixture(scope="module")
def any_server(node_images: list[str]) -> Iterator[Server]:
    process, server = start_server({**KUBERNETES, **TEMPLATES}, suffix="k8s-any")
    yield server
    assert stop_server(process) == 0, server.log()[-3000:]


def use(server: Server, image: str, inside: Callable[[str], None] | None = None) -> None:
    """Commands and files in a sandbox of `image`, as the unprivileged user; then `inside`
    with its id, before it ends."""
    with Sandbox(api_key=server.api_key, base_url=server.url, template=image) as box:
        who = box.commands.run("id -u; pwd; test -e /usr/bin/python3 || echo no python3")
        assert who.stdout.split() == ["1000", "/home/user", "no", "python3"], who
        assert box.commands.run("/bin/echo", ["no", "shell"]).stdout == "no shell\n"
        payload = bytes(range(256)) * 64
        box.files.write("up.bin", payload)
        assert box.files.read("up.bin", format="bytes") == payload
        box.commands.run("echo made here > down.txt")
        assert box.files.read("down.txt") == "made here\n"
        # The runtime is root's and read-only, and nothing of it is in what user code sees.
        owner = box.commands.run("stat -c %u /opt/insien/rt/bin/python3 /opt/insien/rt/lib")
        assert owner.stdout.split() == ["0", "0"], owner
        assert box.commands.run("touch /opt/insien/rt/lib/x").exit_code != 0
        env = box.commands.run("env").stdout
        assert "INSIEN_" not in env
        assert "/opt/insien" not in env
        if inside is not None:
            inside(str(box.sandbox_id))


@pytest.mark.parametrize("image", IMAGES)
def test_a_pod_of_an_image_without_python_runs_the_agent(any_server: Server, image: str) -> None:
    use(any_server, image)


async def test_the_runtime_travels_to_the_pod(any_server: Server, api: httpx.AsyncClient) -> None:
    """No hostPath, and the image's shell is the first stage (it reads the runtime)."""
    async with httpx.AsyncClient(base_url=any_server.url, headers=any_server.headers) as client:
        made = (await client.post("/sandbox/create", json={"template": BUSYBOX})).json()
        try:
            (pod,) = await pods(api, made["sandboxId"])
            (container,) = pod["spec"]["containers"]
            assert container["command"][:2] == ["/bin/sh", "-c"]
            assert not [v for v in pod["spec"]["volumes"] if "hostPath" in v]
        finally:
            await client.post(f"/sandbox/{made['sandboxId']}/destroy")


def test_a_killed_server_finds_its_pod_without_python_again(node_images: list[str]) -> None:
    one = Restartable("k8s-any-recovery")
    settings = {**KUBERNETES, **TEMPLATES}
    server = one.start(**settings)
    try:
        made = httpx.post(
            f"{server.url}/sandbox/create",
            headers={"X-API-Key": server.api_key},
            json={"template": MUSL, "timeout": 600},
        )
        sandbox_id = str(made.json()["sandboxId"])
        # Not the sandbox's owner: closing it before the crash leaves the sandbox be.
        with Sandbox(api_key=server.api_key, base_url=server.url, sandbox_id=sandbox_id) as box:
            box.files.write("kept.txt", "before the crash")
            box.commands.run("sleep 300", background=True)
        one.kill()
        server = one.start(**settings)
        again = Sandbox(api_key=server.api_key, base_url=server.url, sandbox_id=sandbox_id)
        assert again.files.read("kept.txt") == "before the crash"
        assert "sleep 300" in again.commands.run("ps -o args").stdout
        again.destroy()
    finally:
        if one.process is not None and one.process.poll() is None:
            one.kill()
        one.start(**settings, INSIEN_SHUTDOWN_ENDS_SANDBOXES="true")
        assert one.stop() == 0


@pytest.fixture
def staged() -> Iterator[tuple[Path, agent_runtime.Bundle]]:
    """A folder of runtimes on the node (the kubelet here shares this host's filesystem)."""
    made = agent_runtime.bundle()
    assert made is not None
    root = Path(tempfile.mkdtemp(prefix="insien-k8s-runtime-"))
    root.chmod(0o755)
    assert stage(root, made) == Path(staged_dir(str(root), made))
    yield root, made
    shutil.rmtree(root, ignore_errors=True)


async def test_a_runtime_staged_on_the_node_is_mounted_read_only(
    node_images: list[str], api: httpx.AsyncClient, staged: tuple[Path, agent_runtime.Bundle]
) -> None:
    """The node holds the runtime (the kubelet here shares this host's filesystem): the pod
    starts on its loader from a read-only hostPath, with nothing of the image's run first."""
    root, made = staged
    process, server = start_server(
        {**KUBERNETES, **TEMPLATES, "INSIEN_K8S_AGENT_RUNTIME_DIR": str(root)},
        suffix="k8s-staged",
    )
    try:
        found: list[dict[str, Any]] = []
        await trio.to_thread.run_sync(
            use, server, GLIBC, lambda made: found.extend(trio.from_thread.run(pods, api, made))
        )
        (pod,) = found
        (container,) = pod["spec"]["containers"]
        assert container["command"][0] == made.loader
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "runtime"]
        assert (mount["mountPath"], mount["readOnly"]) == ("/opt/insien/rt", True)
    finally:
        assert stop_server(process) == 0, server.log()[-3000:]
