"""Root where it is safe (issue 29): E2B's `user="root"` and `sudo` work where root inside is
unprivileged outside (gVisor; runc with user namespaces remapped) and nowhere else.

As root under gVisor, `apt-get install` of a package from a Debian repository served on
127.0.0.5 (allowOut for that host only) works, while the attack suite's escapes still fail.
Everywhere else root is a 403 that names the reason and the way to root.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from e2b import Sandbox, SandboxException

from tests.conftest import IMAGE, Server, start_server, stop_server
from tests.tools import missing

from ..e2e.upstreams import Upstream, upstream

GVISOR_TEMPLATE = "insien-sandbox:root-test"
REPO_HOST = "deb.test"
REPO_ADDRESS = "127.0.0.5"
PACKAGE = "insien-root-probe"


@dataclass
class World:
    server: Server
    repo: Upstream
    users_remapped: bool

    def sandbox(self, template: str | None = None, **options: object) -> Sandbox:
        return Sandbox.create(
            template,
            api_key=self.server.api_key,
            api_url=f"{self.server.url}/e2b",
            sandbox_url=f"{self.server.url}/e2b",
            **options,  # type: ignore[arg-type]
        )


def build_repository(root: Path) -> None:
    """A flat Debian repository with one dummy package, made by `dpkg-deb --build`."""
    tree = root / "build"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/insien").mkdir(parents=True)
    (tree / "usr/share/insien/probe.txt").write_text("installed from the local repository\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Insien tests <tests@insien.invalid>\n"
        "Description: a package apt installs in the root test\n"
    )
    deb = root / f"{PACKAGE}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True)
    data = deb.read_bytes()
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    (root / "Packages").write_text(
        f"{fields.rstrip()}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n"
    )


@pytest.fixture(scope="module")
def world(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    info = docker_client.info()
    if "runsc" not in info.get("Runtimes", {}):
        missing(
            "runsc (gVisor) registered with this dockerd",
            "apt-get install runsc, and register it with dockerd as .ci/run does",
        )
    root = tmp_path_factory.mktemp("debian-repo")
    build_repository(root)
    repository, tag = GVISOR_TEMPLATE.split(":")
    docker_client.images.get(IMAGE).tag(repository, tag)
    env = {
        # runc by default whatever the test backend, one template under gVisor
        "INSIEN_RUNTIME": "runc",
        "INSIEN_TEMPLATE_SETTINGS": json.dumps({GVISOR_TEMPLATE: {"runtime": "runsc"}}),
        "INSIEN_EGRESS_ALLOW": REPO_ADDRESS,
        "INSIEN_EGRESS_HOSTS": f"{REPO_HOST}={REPO_ADDRESS},other.test={REPO_ADDRESS}",
    }
    remapped = any("name=userns" in o for o in info.get("SecurityOptions") or [])
    with upstream(REPO_ADDRESS, root) as repo:
        process, server = start_server(env, suffix="root")
        try:
            yield World(server, repo, remapped)
        finally:
            code = stop_server(process)
            docker_client.images.remove(GVISOR_TEMPLATE)
            assert code == 0, server.log()[-4000:]


def test_root_is_refused_under_runc_with_the_reason_and_the_way(world: World) -> None:
    if world.users_remapped:
        pytest.skip("this dockerd remaps user namespaces: root is allowed under runc here")
    box = world.sandbox()
    try:
        with pytest.raises(SandboxException) as refused:
            box.commands.run("id -u", user="root")
        message = str(refused.value)
        assert "root is not available" in message, message
        assert "gVisor" in message, message
        with pytest.raises(SandboxException) as refused:
            box.files.write("/tmp/x", "x", user="root")
        assert "gVisor" in str(refused.value)
        # no-new-privileges keeps the image's set-uid sudo powerless
        result = box.commands.run("sudo -n id -u 2>&1; true")
        assert "no new privileges" in result.stdout, result.stdout
        assert box.commands.run("id -u").stdout == "1000\n"
    finally:
        box.kill()


def test_root_under_gvisor_installs_a_package_through_the_egress_proxy(world: World) -> None:
    box = world.sandbox(
        GVISOR_TEMPLATE, allow_internet_access=False, network={"allow_out": [REPO_HOST]}
    )
    try:
        who = box.commands.run('id -u; echo "$HOME $USER"', user="root")
        assert who.stdout.split() == ["0", "/root", "root"], who
        assert box.commands.run("id -u").stdout == "1000\n"  # the user stays the user
        url = f"http://{REPO_HOST}:{world.repo.port}/"
        apt = (
            'apt-get -q -o Acquire::http::Proxy="$HTTP_PROXY" '
            "-o Dir::Etc::sourcelist=/tmp/local.list -o Dir::Etc::sourceparts=- "
            "-o APT::Get::List-Cleanup=0"
        )
        script = (
            f"echo {shlex.quote(f'deb [trusted=yes] {url} ./')} > /tmp/local.list && "
            f"{apt} update && {apt} install -y {PACKAGE} && "
            "cat /usr/share/insien/probe.txt && dpkg -s " + PACKAGE + " | grep Status"
        )
        result = box.commands.run(script, user="root", timeout=120)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        assert "installed from the local repository" in result.stdout
        assert "install ok installed" in result.stdout
        assert any(f"{PACKAGE}_1.0_all.deb" in line for line in world.repo.requests)
        # the proxy lets the repository's host out and nothing else, root or not
        out = box.commands.run(
            "curl -sS -m 20 -i http://other.test/ 2>&1; true", user="root"
        ).stdout
        assert "403" in out.splitlines()[0], out
    finally:
        box.kill()


ESCAPES = {
    "mount": "mount -t tmpfs none /mnt",
    "mount proc": "mount -t proc proc /mnt",
    # gVisor lets root make a node in its own tmpfs; it must lead to no device of the host
    "device node": "mknod /tmp/sda b 8 0 2>/dev/null; head -c 1 /tmp/sda | wc -c | grep -qx 1",
    "kernel module": (
        "python3 -c 'import ctypes, sys; "
        'sys.exit(0 if ctypes.CDLL(None, use_errno=True).init_module(b"", 0, b"") == 0 else 1)\''
    ),
    "modprobe path": "echo /tmp/x > /proc/sys/kernel/modprobe",
    "sysrq": "echo b > /proc/sysrq-trigger",
    "raw socket": ("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'"),
    "packet socket": (
        "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)'"
    ),
    "docker socket": "ls /var/run/docker.sock",
    "the agent's executable": "echo x > /opt/insien/agent.pyz",
    "the agent's folder": "touch /opt/insien/planted",
    "chroot": "chroot / true",
    "network admin": "ip link add dummy0 type dummy || echo x > /proc/sys/net/ipv4/ip_forward",
}


def test_root_under_gvisor_still_cannot_escape(world: World) -> None:
    box = world.sandbox(GVISOR_TEMPLATE)
    other = world.sandbox(GVISOR_TEMPLATE)
    try:
        other.commands.run("echo neighbour > /tmp/neighbour-secret; sleep 300", background=True)
        status = box.commands.run("grep -E '^Cap(Eff|Bnd)' /proc/self/status", user="root")
        for line in status.stdout.splitlines():
            caps = int(line.split()[1], 16)
            for bit, name in (
                (13, "NET_RAW"),
                (21, "SYS_ADMIN"),
                (27, "MKNOD"),
                (16, "SYS_MODULE"),
                (12, "NET_ADMIN"),
                (19, "SYS_PTRACE"),
            ):
                assert not caps & (1 << bit), (name, line)
        for name, command in ESCAPES.items():
            result = box.commands.run(f"{command}; echo code=$?", user="root")
            assert "code=0" not in result.stdout, (name, result.stdout, result.stderr)
        # another sandbox: its own kernel, no network between them, none of its files
        seen = box.commands.run("ls /tmp; ps -eo comm= | sort -u", user="root").stdout
        assert "neighbour-secret" not in seen, seen
        assert "sleep" not in seen.split(), seen
        interfaces = box.commands.run("tail -n +3 /proc/net/dev | cut -d: -f1", user="root")
        assert interfaces.stdout.split() == ["lo"], interfaces.stdout
        # the agent still answers afterwards
        assert box.commands.run("echo alive").stdout == "alive\n"
    finally:
        box.kill()
        other.kill()
