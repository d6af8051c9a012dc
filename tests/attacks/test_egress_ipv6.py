"""IPv6 that carries an IPv4 address (issue 27, W1). The egress decision took `::127.0.0.1`,
`::ffff:0:7f00:1`, `64:ff9b::7f00:1` and `2002:7f00:1::` for public IPv6 addresses, so a sandbox
allowed "everywhere" was let through the operator's ceiling to them; on a host with NAT64 (or
6to4) they reach the host's loopback and the metadata address. Now each is checked as the IPv4
address it carries too, and refused with a 403 before the server connects anywhere.

Here a server listens on 127.0.0.1 (outside the ceiling); the sandbox asks for it in each form,
through the agent's proxy, as plain HTTP and as CONNECT. A second one on 127.0.0.2, which the
ceiling names, shows that the proxy does reach loopback by IPv4 and IPv4-mapped addresses."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server
from tests.e2e.upstreams import Upstream, upstream

EMBEDDED_LOOPBACK = [
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:0:7f00:1",  # IPv4-translated (RFC 2765)
    "64:ff9b::7f00:1",  # NAT64, well-known prefix
    "2002:7f00:1::",  # 6to4
]


@dataclass
class World:
    server: Server
    target: Upstream  # 127.0.0.1: outside the ceiling
    allowed: Upstream  # 127.0.0.2: named by the ceiling


@pytest.fixture(scope="module")
def world(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    roots: list[Path] = []
    for name in ("target", "allowed"):
        root = tmp_path_factory.mktemp(name)
        (root / "index.txt").write_text(f"hello from {name}\n")
        roots.append(root)
    env = {"INSIEN_EGRESS_ALLOW": "public,127.0.0.2", "INSIEN_POOL_SIZE": "1"}
    with upstream("127.0.0.1", roots[0]) as target, upstream("127.0.0.2", roots[1]) as allowed:
        process, server = start_server(env, suffix="egress-ipv6")
        try:
            yield World(server, target, allowed)
        finally:
            code = stop_server(process)
            assert code == 0, server.log()[-3000:]


def through_proxy(box: Sandbox, host: str, port: int, *extra: str) -> tuple[int, str]:
    """curl through the agent's proxy, named explicitly (NO_PROXY lists loopback): its exit
    code, and what it printed (the head and body with -i, or the proxy's refusal)."""
    literal = f"[{host}]" if ":" in host else host
    url = shlex.quote(f"http://{literal}:{port}/index.txt")
    args = " ".join(shlex.quote(a) for a in extra)
    result = box.commands.run(
        f'curl -sS -g -m 20 -x "$HTTP_PROXY" --noproxy x.invalid {args} {url}', timeout=60
    )
    return result.exit_code, result.stdout + result.stderr


def test_ipv6_forms_of_loopback_are_refused_by_the_server(world: World) -> None:
    sandbox = Sandbox(
        api_key=world.server.api_key,
        base_url=world.server.url,
        allow_out=["0.0.0.0/0", "::/0"],
    )
    with sandbox as box:
        # The proxy works, by IPv4 and IPv4-mapped IPv6, where the ceiling admits it.
        for host in ("127.0.0.2", "::ffff:127.0.0.2"):
            code, out = through_proxy(box, host, world.allowed.port, "-f")
            assert (code, out) == (0, "hello from allowed\n"), host
        # 127.0.0.1 by IPv4 is refused, as it always was.
        code, out = through_proxy(box, "127.0.0.1", world.target.port, "-i")
        assert out.startswith("HTTP/1.1 403"), out
        assert "outside what the operator allows" in out
        for host in EMBEDDED_LOOPBACK:
            # Plain HTTP: the 403's body says why.
            code, out = through_proxy(box, host, world.target.port, "-i")
            assert out.startswith("HTTP/1.1 403"), (host, out)
            assert "outside what the operator allows" in out, out
            assert "which carries 127.0.0.1" in out, out
            # CONNECT: refused the same way, before any tunnel.
            code, out = through_proxy(box, host, world.target.port, "-p")
            assert code != 0, (host, out)
            assert "403" in out, (host, out)
        info = box.network.get()
        assert (info.connections, info.refused) == (2, 1 + 2 * len(EMBEDDED_LOOPBACK))
    assert world.target.requests == []
    assert len(world.allowed.requests) == 2
