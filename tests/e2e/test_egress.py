"""Ways out of a sandbox that has no network interface (issue 14, second part): the agent's
HTTP proxy inside, the server's decision outside. Real clients in a real sandbox (curl,
Python's urllib, pip, git, npm) reach upstream servers this test starts on 127.0.0.2-4, and
nothing else: the operator's ceiling here admits 127.0.0.2 and 127.0.0.3 only."""

from __future__ import annotations

import hashlib
import secrets
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from insien_sandbox import Sandbox
from tests.backends import docker_only
from tests.conftest import Server, rss_bytes, start_server, stop_server
from tests.e2e.restartable import Restartable, restartable  # noqa: F401 (a fixture)

from .upstreams import (
    NPM_PACKAGE,
    WHEEL_NAME,
    Upstream,
    npm_tarball,
    pip_wheel,
    populate,
    tls_context,
    upstream,
)

NAMES = {
    "allowed.test": "127.0.0.2",
    "secure.test": "127.0.0.2",
    "pypi.test": "127.0.0.2",
    "blocked.test": "127.0.0.2",
    "other.test": "127.0.0.3",
    "git.test": "127.0.0.3",
    "registry.test": "127.0.0.3",
    "rebind.test": "127.0.0.1",
    "outside.test": "127.0.0.4",
}

EGRESS = {
    "INSIEN_EGRESS_ALLOW": "public,127.0.0.2,127.0.0.3/32",
    "INSIEN_EGRESS_DENY": "blocked.test",
    "INSIEN_EGRESS_HOSTS": ",".join(f"{n}={a}" for n, a in NAMES.items()),
}


@dataclass
class World:
    server: Server
    a: Upstream  # 127.0.0.2: files, the PyPI index
    b: Upstream  # 127.0.0.3: files, git, the npm registry
    outside: Upstream  # 127.0.0.4: up and serving, but outside the operator's ceiling
    secure: Upstream  # 127.0.0.2 over TLS, for CONNECT
    cert: Path

    def sandbox(self, **options: object) -> Sandbox:
        return Sandbox(api_key=self.server.api_key, base_url=self.server.url, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    roots = [tmp_path_factory.mktemp(name) for name in ("a", "b", "outside", "tls")]
    env = {**EGRESS, "INSIEN_POOL_SIZE": "1"}
    context, cert = tls_context(roots[3], "secure.test")
    with (
        upstream("127.0.0.2", roots[0]) as a,
        upstream("127.0.0.3", roots[1]) as b,
        upstream("127.0.0.4", roots[2]) as outside,
        upstream("127.0.0.2", roots[0], context) as secure,
    ):
        populate(roots[0], f"http://registry.test:{b.port}")
        populate(roots[1], f"http://registry.test:{b.port}")
        populate(roots[2], f"http://registry.test:{b.port}")
        process, server = start_server(env, suffix="egress")
        try:
            yield World(server, a, b, outside, secure, cert)
        finally:
            code = stop_server(process)
            assert code == 0, server.log()[-3000:]


def curl(box: Sandbox, url: str, *extra: str) -> tuple[int, str]:
    """curl's exit code and what it printed (the body, or the proxy's refusal)."""
    args = " ".join(shlex.quote(a) for a in extra)
    result = box.commands.run(f"curl -sS -m 20 {args} {shlex.quote(url)}", timeout=60)
    return result.exit_code, result.stdout + result.stderr


def test_allowed_by_domain_and_by_address(world: World) -> None:
    with world.sandbox(allow_out=["allowed.test", "127.0.0.3"]) as box:
        code, out = curl(box, f"http://allowed.test:{world.a.port}/index.txt", "-f")
        assert (code, out) == (0, "hello from upstream\n")
        code, out = curl(box, f"http://127.0.0.3:{world.b.port}/index.txt", "-f")
        assert (code, out) == (0, "hello from upstream\n")
        # The sandbox never sees the upstream's address: the server connected to it.
        assert any("GET /index.txt" in line for line in world.a.requests)


def test_refusals_name_the_rule(world: World) -> None:
    with world.sandbox(allow_out=["*.test", "127.0.0.0/8"], deny_out=["other.test"]) as box:
        code, out = curl(box, f"http://other.test:{world.b.port}/index.txt", "-i")
        assert code == 0
        assert out.startswith("HTTP/1.1 403")
        assert "denyOut rule 'other.test'" in out
        # The sandbox allows 127.0.0.4, the operator does not: refused, though it listens.
        code, out = curl(box, f"http://outside.test:{world.outside.port}/index.txt", "-i")
        assert out.startswith("HTTP/1.1 403")
        assert "outside what the operator allows" in out
        # The operator's deny wins over the sandbox's allow.
        code, out = curl(box, f"http://blocked.test:{world.a.port}/index.txt", "-i")
        assert out.startswith("HTTP/1.1 403")
        assert "operator's rule 'blocked.test'" in out
        # A name allowed by the sandbox that resolves to loopback (the server's own API).
        port = httpx.URL(world.server.url).port
        code, out = curl(box, f"http://rebind.test:{port}/health", "-i")
        assert out.startswith("HTTP/1.1 403")
        assert "127.0.0.1" in out
        # CONNECT straight to the server's address is refused the same way (NO_PROXY covers
        # the sandbox's own loopback, so the proxy is named explicitly here).
        result = box.commands.run(
            f'curl -sS -k -p -x "$HTTPS_PROXY" --noproxy x.invalid https://127.0.0.1:{port}/health'
        )
        assert result.exit_code != 0
        assert "403" in result.stderr
        info = box.network.get()
        assert (info.refused, info.connections) == (5, 0)


def test_the_ceiling_bounds_even_everything(world: World) -> None:
    with world.sandbox(allow_out=["*"]) as box:
        code, out = curl(box, f"http://127.0.0.4:{world.outside.port}/index.txt", "-i")
        assert "403" in out.splitlines()[0]
        code, out = curl(box, f"http://127.0.0.2:{world.a.port}/index.txt", "-f")
        assert (code, out) == (0, "hello from upstream\n")


@docker_only(
    "the test cluster has no CNI: its pods share the node's network, and the deny-all"
    " NetworkPolicy of deploy/kubernetes is applied but not enforced (docs/kubernetes.md)"
)
def test_no_policy_no_proxy_no_way_out(world: World) -> None:
    with world.sandbox() as box:
        env = box.commands.run("env").stdout
        assert "proxy" not in env.lower()
        code, out = curl(box, f"http://127.0.0.2:{world.a.port}/index.txt")
        assert code == 7, out  # curl: could not connect (there is no interface to route by)


def test_live_policy_changes(world: World) -> None:
    with world.sandbox() as box:
        info = box.network.update(allow_out=["allowed.test"])
        assert info.policy.allow_out == ["allowed.test"]
        assert "HTTP_PROXY=" in box.commands.run("env").stdout
        code, out = curl(box, f"http://allowed.test:{world.a.port}/index.txt", "-f")
        assert code == 0
        box.network.update(allow_out=["allowed.test"], deny_out=["allowed.test"])
        code, out = curl(box, f"http://allowed.test:{world.a.port}/index.txt", "-i")
        assert out.startswith("HTTP/1.1 403")
        box.network.update()  # nothing allowed: the proxy is off for commands started now
        assert "HTTP_PROXY" not in box.commands.run("env").stdout
        info = box.network.get()
        assert (info.connections, info.refused) == (1, 1)
        metrics = box.metrics()
        assert (metrics.egress_bytes_out, metrics.egress_bytes_in) == (
            info.bytes_out,
            info.bytes_in,
        )
        assert info.bytes_in > 0
        assert info.bytes_out > 0


def test_bad_rules_are_refused_with_the_entry_named(world: World) -> None:
    response = httpx.post(
        f"{world.server.url}/sandbox/create",
        headers=world.server.headers,
        json={"network": {"allowOut": ["exa mple.org"]}},
    )
    assert response.status_code == 400
    assert "exa mple.org" in response.json()["message"]


def test_https_through_connect(world: World) -> None:
    with world.sandbox(allow_out=["secure.test:" + str(world.secure.port)]) as box:
        box.files.write("/tmp/ca.pem", world.cert.read_bytes())
        url = f"https://secure.test:{world.secure.port}/index.txt"
        code, out = curl(box, url, "-f", "--cacert", "/tmp/ca.pem")
        assert (code, out) == (0, "hello from upstream\n")
        # Python's urllib follows HTTPS_PROXY too, and checks the certificate end to end.
        script = (
            "import ssl, urllib.request\n"
            "context = ssl.create_default_context(cafile='/tmp/ca.pem')\n"
            f"print(urllib.request.urlopen({url!r}, context=context).read().decode(), end='')\n"
        )
        result = box.commands.run("python3", ["-c", script])
        assert (result.exit_code, result.stdout) == (0, "hello from upstream\n"), result.stderr
        # The rule names one port: another port of the same name is refused.
        code, out = curl(box, f"http://secure.test:{world.a.port}/index.txt", "-i")
        assert out.startswith("HTTP/1.1 403")


def test_pip_downloads_from_a_local_index(world: World) -> None:
    with world.sandbox(allow_out=["pypi.test"]) as box:
        box.files.write("/tmp/pip.whl", pip_wheel().read_bytes())
        index = f"http://pypi.test:{world.a.port}/simple/"
        result = box.commands.run(
            "python3 /tmp/pip.whl/pip download --no-cache-dir --disable-pip-version-check"
            f" --index-url {index} --trusted-host pypi.test --dest /tmp/got {WHEEL_NAME}",
            timeout=120,
        )
        assert result.exit_code == 0, result.stdout + result.stderr
        listing = box.commands.run("ls /tmp/got").stdout
        assert f"{WHEEL_NAME}-1.0.0-py3-none-any.whl" in listing


def test_git_clones_over_smart_http(world: World) -> None:
    with world.sandbox(allow_out=["git.test"]) as box:
        url = f"http://git.test:{world.b.port}/git/demo.git"
        result = box.commands.run(f"git clone -q {url} demo && cat demo/README.md", timeout=120)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "cloned through the egress proxy\n"
        assert any("git-upload-pack" in line for line in world.b.requests)


def test_npm_installs_from_a_local_registry(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = Path.home() / ".cache" / "insien-tests"
    tarball = npm_tarball(cache)
    with world.sandbox(allow_out=["registry.test"]) as box:
        box.files.write("/tmp/npm.tgz", tarball.read_bytes())
        assert (
            box.commands.run("mkdir -p /tmp/npm && tar xzf /tmp/npm.tgz -C /tmp/npm").exit_code == 0
        )
        registry = f"http://registry.test:{world.b.port}/"
        result = box.commands.run(
            "mkdir app && cd app && echo '{}' > package.json"
            " && node /tmp/npm/package/bin/npm-cli.js"
            f" install --no-audit --no-fund --registry {registry} {NPM_PACKAGE}"
            f" && node -e \"console.log(require('{NPM_PACKAGE}'))\"",
            timeout=180,
        )
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith("hello from the local registry")


def test_the_stock_e2b_sdk(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """E2B's names and defaults: internet on unless denied; allowOut as exceptions to a
    deny-all; `update_network` replaces the policy live."""
    from e2b import ALL_TRAFFIC
    from e2b import Sandbox as E2BSandbox

    monkeypatch.setenv("E2B_API_URL", f"{world.server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{world.server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", world.server.api_key)
    allowed = f"http://allowed.test:{world.a.port}/index.txt"
    other = f"http://other.test:{world.b.port}/index.txt"
    sandbox = E2BSandbox.create(network={"deny_out": [ALL_TRAFFIC], "allow_out": ["allowed.test"]})
    try:
        assert sandbox.commands.run(f"curl -sSf {allowed}").stdout == "hello from upstream\n"
        refused = sandbox.commands.run(f"curl -sS -i {other}")
        assert refused.stdout.startswith("HTTP/1.1 403")
        sandbox.update_network({"deny_out": ["allowed.test"]})  # internet on, but not that
        assert sandbox.commands.run(f"curl -sSf {other}").stdout == "hello from upstream\n"
        refused = sandbox.commands.run(f"curl -sS -i {allowed}")
        assert refused.stdout.startswith("HTTP/1.1 403")
    finally:
        sandbox.kill()
    closed = E2BSandbox.create(allow_internet_access=False)
    try:
        assert "proxy" not in closed.commands.run("env").stdout.lower()
    finally:
        closed.kill()


def test_a_policy_outlives_a_server_restart(
    world: World,
    restartable: Restartable,  # noqa: F811
) -> None:
    """Kept with the agent as a sealed note: a SIGKILLed server comes back enforcing it."""
    server = restartable.start(**EGRESS)
    created = httpx.post(
        f"{server.url}/sandbox/create",
        headers=server.headers,
        json={"network": {"allowOut": ["allowed.test"], "denyOut": ["other.test"]}},
    )
    sandbox_id = created.json()["sandboxId"]
    restartable.kill()
    server = restartable.start(**EGRESS)
    with Sandbox.connect(sandbox_id, server.api_key, server.url) as box:
        code, out = curl(box, f"http://allowed.test:{world.a.port}/index.txt", "-f")
        assert (code, out) == (0, "hello from upstream\n")
        code, out = curl(box, f"http://other.test:{world.b.port}/index.txt", "-i")
        assert "denyOut rule 'other.test'" in out
        assert box.network.get().policy.deny_out == ["other.test"]
        box.destroy()


STALL = """
import os, socket, sys, time
proxy = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
held = []
for _ in range(int(sys.argv[2])):
    connection = socket.create_connection(("127.0.0.1", proxy))
    connection.sendall(f"GET {sys.argv[1]} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
    assert connection.recv(1000)  # bytes flow, then nobody reads
    held.append(connection)
print("stalled", flush=True)
time.sleep(600)
"""


def test_a_program_that_stops_reading_does_not_grow_the_server(world: World) -> None:
    """An upstream sending without end to a program in the sandbox that reads nothing: the
    agent's writes stop being answered, so the server stops reading the upstream."""
    with world.sandbox(allow_out=["allowed.test"]) as box:
        box.files.write("stall.py", STALL)
        flood = f"http://allowed.test:{world.a.port}/flood"
        handle = box.commands.run(f"python3 stall.py {flood} 1", background=True)
        for _ in range(100):
            if box.network.get().bytes_in > 0:
                break
            time.sleep(0.1)
        assert box.network.get().connections == 1
        before = rss_bytes(world.server.pid)
        time.sleep(4)
        grown = rss_bytes(world.server.pid) - before
        assert grown < 48 * 1024 * 1024, f"the server grew by {grown} bytes"
        assert box.network.get().bytes_in < 64 * 1024 * 1024
        handle.kill()
        assert box.commands.run("echo fine").stdout == "fine\n"


def test_connections_out_are_limited_per_sandbox(world: World) -> None:
    process, server = start_server({**EGRESS, "INSIEN_MAX_TUNNELS": "2"}, suffix="egress-limit")
    try:
        with Sandbox(api_key=server.api_key, base_url=server.url, allow_out=["*.test"]) as box:
            box.files.write("stall.py", STALL)
            flood = f"http://allowed.test:{world.a.port}/flood"
            box.commands.run(f"python3 stall.py {flood} 2", background=True)
            for _ in range(100):
                if box.network.get().connections == 2:
                    break
                time.sleep(0.1)
            _, out = curl(box, f"http://other.test:{world.b.port}/index.txt", "-i")
            assert out.startswith("HTTP/1.1 503")
            assert "INSIEN_MAX_TUNNELS" in out
    finally:
        assert stop_server(process) == 0


def test_large_downloads_arrive_whole_over_http_and_tls(world: World) -> None:
    # Many tunnel frames to the sandbox at once: their order is the connection's bytes (a
    # reordering shows as a wrong digest over HTTP, and as a TLS record error over CONNECT).
    data = secrets.token_bytes(24 * 1024 * 1024)
    (world.a.root / "big.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    hosts = ["allowed.test", "secure.test:" + str(world.secure.port)]
    with world.sandbox(allow_out=hosts) as box:
        box.files.write("/tmp/ca.pem", world.cert.read_bytes())
        # Connections the sandbox drops while bytes are still coming its way first: what
        # was in flight to them must not land in the connections after them.
        cut = f"http://allowed.test:{world.a.port}/big.bin"
        dropped = box.commands.run(
            f"for i in 1 2 3 4 5 6; do curl -sS {shlex.quote(cut)} | head -c 100000 | wc -c; done",
            timeout=90,
        )
        assert dropped.stdout.split() == ["100000"] * 6, dropped
        for url, extra in (
            (f"http://allowed.test:{world.a.port}/big.bin", ""),
            (f"https://secure.test:{world.secure.port}/big.bin", "--cacert /tmp/ca.pem"),
        ):
            fetched = box.commands.run(
                f"curl -sS -f -m 60 {extra} {shlex.quote(url)} | sha256sum", timeout=90
            )
            assert fetched.stdout.split()[0] == digest, (url, fetched.stdout, fetched.stderr)
