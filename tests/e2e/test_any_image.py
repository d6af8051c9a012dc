"""Any image makes a sandbox (issue 31): the agent runs on the Python runtime Insien brings in
its volume, through that runtime's own loader, so neither the image's libc nor its python3
matters. Each image here is made with `docker import` from a folder of our own: a static
busybox alone, busybox with musl standing for Alpine, Debian without python3, and busybox
whose python3 is a script that fails. In each: commands (with and without a shell), files
both ways, a background process and a reconnect to it, a terminal, a watch, a port, code
contexts refused clearly, and a server SIGKILLed and started again; with the musl image, the
warm pool, egress, pause, snapshots, the seed contract and the stock E2B SDK."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import httpx
import pytest
import trio
from e2b import Sandbox as E2BSandbox

from insien.runtime.agent_runtime import bundle
from insien.runtime.docker import agent_volume
from insien_sandbox import RPCError, Sandbox
from tests.conftest import IMAGE, Server, start_server, stop_server
from tests.e2e.helpers import call, containers_of, websocket
from tests.e2e.restartable import Restartable
from tests.e2e.test_egress import EGRESS
from tests.e2e.upstreams import Upstream, populate, upstream

T = TypeVar("T")

BUSYBOX = "insien-test-any:busybox"
MUSL = "insien-test-any:musl"
GLIBC = "insien-test-any:glibc-no-python"
FAKE_PYTHON = "insien-test-any:python-exits-1"
NO_SHELL = "insien-test-any:no-shell"
IMAGES = [BUSYBOX, MUSL, GLIBC, FAKE_PYTHON]
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _debian_package(name: str, into: Path) -> Path:
    """The files of one of Debian's packages (`apt-get download`, then `dpkg-deb -x`)."""
    into.mkdir(parents=True, exist_ok=True)
    if not list(into.glob(f"{name}_*.deb")):
        fetched = subprocess.run(
            ["apt-get", "download", name], cwd=into, capture_output=True, check=False
        )
        if fetched.returncode != 0:
            pytest.skip(f"cannot fetch Debian's {name}: {fetched.stderr.decode()[-300:]}")
    (deb,) = into.glob(f"{name}_*.deb")
    tree = into / name
    if not tree.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _rootfs(busybox: Path, *, applets: bool = True) -> tuple[tarfile.TarFile, io.BytesIO]:
    """A tar with /bin/busybox and (unless told not to) a link per applet, /bin/sh among them."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w")  # noqa: SIM115 (closed by _import)
    for folder in ("bin", "usr", "usr/bin", "lib", "etc", "www"):
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    _add(tar, "bin/busybox", busybox.read_bytes())
    if applets:
        listed = subprocess.run([str(busybox), "--list"], capture_output=True, check=True)
        for applet in listed.stdout.decode().split():
            if applet != "busybox":
                _link(tar, f"bin/{applet}", "busybox")
    _add(tar, "www/index.html", b"served by busybox\n", 0o644)
    return tar, buffer


def _import(
    client: docker.DockerClient, tar: tarfile.TarFile, buffer: io.BytesIO, tag: str
) -> None:
    tar.close()
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version)


def _without_python(client: docker.DockerClient, busybox: Path) -> None:
    """Debian (the default image) with every python3 removed: glibc, no interpreter (and a
    busybox for its httpd)."""
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w") as tar:
        _add(tar, "usr/local/bin/busybox", busybox.read_bytes())
        _add(tar, "www/index.html", b"served by busybox\n", 0o644)
    container = client.containers.create(
        IMAGE,
        ["sh", "-c", "rm -f /usr/bin/python3*"],
        user="0",
        network_mode="none",
        entrypoint=[],
    )
    try:
        container.put_archive("/", extra.getvalue())
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        repository, _, version = GLIBC.partition(":")
        container.commit(repository=repository, tag=version, changes=["ENTRYPOINT []"])
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    debs = Path(tempfile.gettempdir()) / "insien-test-debs"
    busybox = _debian_package("busybox-static", debs) / "bin" / "busybox"
    musl = _debian_package("musl", debs)

    tar, buffer = _rootfs(busybox)
    _import(docker_client, tar, buffer, BUSYBOX)

    tar, buffer = _rootfs(busybox)
    libc = (musl / "lib/x86_64-linux-musl/libc.so").read_bytes()
    _add(tar, "lib/ld-musl-x86_64.so.1", libc)
    _add(tar, "lib/libc.musl-x86_64.so.1", libc)
    # Alpine's users: root, and no uid 1000.
    _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    _import(docker_client, tar, buffer, MUSL)

    _without_python(docker_client, busybox)

    tar, buffer = _rootfs(busybox)
    _add(tar, "usr/bin/python3", b"#!/bin/sh\nexit 1\n")
    _import(docker_client, tar, buffer, FAKE_PYTHON)

    tar, buffer = _rootfs(busybox, applets=False)
    _import(docker_client, tar, buffer, NO_SHELL)
    yield [*IMAGES, NO_SHELL]
    for tag in (*IMAGES, NO_SHELL):
        docker_client.images.remove(tag, force=True)


def _templates() -> dict[str, str]:
    return {"INSIEN_TEMPLATES": ",".join([*IMAGES, NO_SHELL])}


@pytest.fixture(scope="module")
def any_server(images: list[str]) -> Iterator[Server]:
    process, info = start_server(_templates(), suffix="any-image")
    yield info
    code = stop_server(process)
    assert code == 0, f"insien serve exited with {code}:\n{info.log()[-4000:]}"


def _until(what: Callable[[], T | None], seconds: float = 20) -> T:
    """Poll `what` until it gives something other than None."""
    deadline = time.monotonic() + seconds
    while True:
        found = what()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_the_agent_brings_its_runtime() -> None:
    """The host can make the runtime here, and a container starts the agent through it."""
    made = bundle()
    assert made is not None
    command = agent_volume.entrypoint("/usr/bin/python3")
    assert command[0] == made.loader
    assert "--library-path" in command
    assert command[-1] == "/opt/insien/agent.pyz"


@pytest.mark.parametrize("image", IMAGES)
def test_a_sandbox_works_in_any_image(any_server: Server, image: str) -> None:
    with Sandbox(api_key=any_server.api_key, base_url=any_server.url, template=image) as box:
        # A command line through the image's own /bin/sh, as the unprivileged user.
        who = box.commands.run("id -u; echo $HOME; pwd")
        assert who.exit_code == 0, who
        assert who.stdout.split() == ["1000", "/home/user", "/home/user"]
        # Nothing of the agent's runtime in what user code sees.
        env = dict(
            line.split("=", 1)
            for line in box.commands.run("env").stdout.splitlines()
            if "=" in line
        )
        assert env["PATH"] == SAFE_PATH
        assert not [name for name in env if name.startswith(("LD_", "PYTHON", "INSIEN_"))]
        listed = box.commands.run("cat /proc/[0-9]*/comm").stdout
        assert "insien-agent" in listed
        assert "ld-linux" not in listed
        # A program with its arguments, no shell involved.
        assert box.commands.run("/bin/echo", ["no", "shell"]).stdout == "no shell\n"

        # Files up and down, and what a command wrote.
        payload = bytes(range(256)) * 64
        box.files.write("up.bin", payload)
        assert box.files.read("up.bin", format="bytes") == payload
        assert box.commands.run("wc -c < up.bin").stdout.strip() == str(len(payload))
        box.commands.run("echo made here > down.txt")
        assert box.files.read("down.txt") == "made here\n"

        # A background process, left and found again.
        handle = box.commands.run(
            "for i in 1 2 3; do echo line $i; sleep 0.2; done", background=True
        )
        pid = handle.pid
        handle.disconnect()
        again = box.commands.connect(pid)
        finished = again.wait()
        assert finished.stdout.splitlines() == ["line 1", "line 2", "line 3"]

        # A terminal on the image's shell.
        seen = bytearray()
        terminal = box.pty.create(cmd="/bin/sh", on_data=lambda data: seen.extend(data))
        box.pty.send_input(terminal.pid, "echo tty-$((6*7)); exit\n")
        terminal.wait()
        assert b"tty-42" in seen

        # A watch sees what a command makes.
        watch = box.files.watch(".")
        box.commands.run("touch watched.txt")
        deadline = time.monotonic() + 20
        for event in watch:
            if event.name == "watched.txt" or time.monotonic() > deadline:
                break
        assert event.name == "watched.txt"
        watch.stop()

        # A port a program of the image's listens on.
        box.commands.run("busybox httpd -f -p 8000 -h /www", background=True)
        with box.ports.forward(8000) as forward:

            def fetched() -> str | None:
                try:
                    response = httpx.get(f"{forward.url}/index.html", timeout=5)
                except httpx.HTTPError:
                    return None
                return response.text if response.status_code == 200 else None

            assert _until(fetched) == "served by busybox\n"

        # Code contexts need the image's python3: refused, and saying why.
        with pytest.raises(RPCError) as refused:
            box.run_code("1 + 1")
        if image == FAKE_PYTHON:
            assert "did not start" in str(refused.value) or "exit" in str(refused.value)
        else:
            assert "/usr/bin/python3" in str(refused.value)


def test_a_shell_command_without_a_shell_is_refused_clearly(any_server: Server) -> None:
    with Sandbox(api_key=any_server.api_key, base_url=any_server.url, template=NO_SHELL) as box:
        with pytest.raises(RPCError) as refused:
            box.commands.run("echo hello")
        assert "/bin/sh" in str(refused.value)
        assert box.commands.run("/bin/busybox", ["echo", "hello"]).stdout == "hello\n"


def test_sandboxes_of_any_image_survive_a_killed_server(
    images: list[str], docker_client: docker.DockerClient
) -> None:
    restartable = Restartable("any-image-recovery")
    restartable.env.update(_templates())
    server = restartable.start()
    key = restartable.env["INSIEN_API_KEY"]
    try:
        started: dict[str, tuple[str, int]] = {}
        for image in IMAGES:
            box = Sandbox(api_key=key, base_url=server.url, template=image, timeout=600)
            box.files.write("kept.txt", image)
            handle = box.commands.run(
                "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done", background=True
            )
            started[image] = (str(box.sandbox_id), handle.pid)
            handle.disconnect()
            box.keep()  # closing the client leaves the sandbox running
            box.close()
        restartable.kill()  # SIGKILL: nothing tidied, every agent keeps running alone
        for sandbox_id, _ in started.values():
            assert len(containers_of(docker_client, sandbox_id)) == 1
        server = restartable.start()
        for image, (sandbox_id, pid) in started.items():
            with Sandbox(api_key=key, base_url=server.url, sandbox_id=sandbox_id) as box:
                assert box.files.read("kept.txt") == image
                finished = box.commands.connect(pid).wait()
                assert finished.stdout.splitlines() == [f"tick {i}" for i in range(1, 6)]
                assert box.commands.run("echo", ["back"]).stdout == "back\n"
                box.destroy()
    finally:
        if restartable.process is not None and restartable.process.poll() is None:
            restartable.kill()
        restartable.start(INSIEN_SHUTDOWN_ENDS_SANDBOXES="true")
        assert restartable.stop() == 0


@pytest.fixture(scope="module")
def alpine_world(
    images: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Upstream]]:
    """A server with a warm pool of the musl image (standing for Alpine) and an upstream its
    sandboxes may reach through the egress proxy."""
    root = tmp_path_factory.mktemp("alpine-upstream")
    with upstream("127.0.0.2", root) as allowed:
        populate(root, f"http://registry.test:{allowed.port}")
        env = {
            **_templates(),
            **EGRESS,
            "INSIEN_POOL_SIZE": "0",
            "INSIEN_POOLS": json.dumps([{"template": MUSL, "size": 1}]),
        }
        process, server = start_server(env, suffix="any-image-alpine")
        try:
            yield server, allowed
        finally:
            code = stop_server(process)
            assert code == 0, server.log()[-4000:]


def _pooled(client: docker.DockerClient) -> set[str]:
    """Sandbox ids of the musl image's containers made for a pool (before any create here,
    all of them wait)."""
    return {
        container.labels["insien.sandbox.id"]
        for container in client.containers.list(filters={"ancestor": MUSL})
        if container.labels.get("insien.pool")
    }


def test_an_alpine_like_image_behind_every_front(
    alpine_world: tuple[Server, Upstream],
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool, egress, pause, snapshots, the seed contract and the stock E2B SDK work with a
    musl image that has no Python, as with the default one."""
    server, allowed = alpine_world
    _until(lambda: httpx.get(f"{server.url}/health").json()["pool"] == 1 or None, 60)
    waiting = _pooled(docker_client)
    box = Sandbox(api_key=server.api_key, base_url=server.url, template=MUSL, timeout=300)
    try:
        # Claimed from the pool: the container that was waiting, renamed for its owner.
        assert box.commands.run("echo claimed").stdout == "claimed\n"
        assert box.sandbox_id in waiting
        _until(  # the rename that seals its owner follows the hand-over
            lambda: (
                "-owner-" in containers_of(docker_client, str(box.sandbox_id))[0]["Names"][0]
                or None
            )
        )
        # Out through the egress proxy, with the image's own busybox wget.
        box.network.update(allow_out=["allowed.test"])
        fetched = box.commands.run(f"wget -q -O - http://allowed.test:{allowed.port}/index.txt")
        assert fetched.stdout == "hello from upstream\n", fetched
        box.files.write("kept.txt", "before the pause\n")
        assert box.pause().state == "paused"
        assert box.resume().state == "running"
        assert box.commands.run("cat kept.txt").stdout == "before the pause\n"
        template = box.snapshot()
    finally:
        box.destroy()
    with Sandbox(api_key=server.api_key, base_url=server.url, template=template) as copy:
        assert copy.files.read("kept.txt") == "before the pause\n"
        assert copy.commands.run("cat /etc/passwd").stdout.startswith("root:")
    httpx.delete(f"{server.url}/snapshots/{template}", headers=server.headers).raise_for_status()

    # The seed contract: create, a command over the agent link, status, destroy.
    created = httpx.post(
        f"{server.url}/sandbox/create", headers=server.headers, json={"template": MUSL}
    ).json()
    assert trio.run(_seed_exec, created["agentUrl"]) == "seed\n"
    status = httpx.get(
        f"{server.url}/sandbox/{created['sandboxId']}/status", headers=server.headers
    )
    assert status.json()["connected"] is True
    httpx.post(f"{server.url}/sandbox/{created['sandboxId']}/destroy", headers=server.headers)

    # The stock E2B SDK, with the image as its template.
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    e2b_box = E2BSandbox.create(template=MUSL)
    try:
        assert e2b_box.is_running()
        # E2B's SDK runs command lines with /bin/bash, which busybox images lack: their sh.
        assert e2b_box.commands.run("echo e2b $(uname -s)").stdout == "e2b Linux\n"
        e2b_box.files.write("/home/user/e2b.txt", "from e2b")
        assert e2b_box.files.read("/home/user/e2b.txt") == "from e2b"
    finally:
        e2b_box.kill()


async def _seed_exec(agent_url: str) -> str:
    async with websocket(agent_url) as ws:
        reply = await call(ws, {"id": 1, "type": "exec", "cmd": "echo", "args": ["seed"]})
    return str(reply["stdout"])
