"""Secrets that never enter the sandbox (issue 30): the server keeps them encrypted and its
egress proxy adds them on the way out. Real clients in a real sandbox (curl, Python's urllib)
reach upstreams on 127.0.0.2-3 over HTTPS and HTTP; the upstreams record what they got. The
server trusts the upstreams' test certificate through INSIEN_EGRESS_CA_FILE; the sandbox trusts
only the server's egress CA, and holds nothing but placeholders."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest

from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server
from tests.e2e.restartable import Restartable, restartable  # noqa: F401 (a fixture)

from .upstreams import (
    WHEEL_NAME,
    Handler,
    NoNameLookup,
    Upstream,
    pip_wheel,
    populate,
    tls_context,
    upstream,
)

NAMES = {
    "api.test": "127.0.0.2",  # TLS, a certificate the server trusts
    "plain.test": "127.0.0.2",  # plain HTTP
    "bad.test": "127.0.0.3",  # TLS, a certificate nobody trusts
    "elsewhere.test": "127.0.0.3",  # plain HTTP, bound to no secret
    "pkgs.test": "127.0.0.3",  # TLS: a PyPI index and a git repository
}


class RecordingHandler(Handler):
    """The upstreams' files, PyPI index and git, recording each request's Authorization."""

    def log_message(self, format: str, *args: Any) -> None:
        auth = self.headers.get("Authorization", "") if self.headers else ""
        self.server.requests.append(f"{self.requestline} auth={auth}")


class Echo(NoNameLookup):
    """Answers every request with what it received (method, path, headers, body), and keeps
    a copy: the test sees what left the proxy."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.received: list[dict[str, Any]] = []
        super().__init__((host, 0), EchoHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def seen(self) -> str:
        return json.dumps(self.received)


class EchoHandler(BaseHTTPRequestHandler):
    server: Echo

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        if self.path.startswith("/quiet"):  # an API that does not quote its request back
            self.server.received.append({"path": self.path, "headers": dict(self.headers)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        got = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        self.server.received.append(got)
        payload = json.dumps(got).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer


@contextmanager
def echo(host: str, context: Any = None) -> Iterator[Echo]:
    server = Echo(host)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class World:
    server: Server
    api: Echo
    plain: Echo
    bad: Echo
    elsewhere: Echo
    pkgs: Upstream
    env: dict[str, str]
    values: list[str]
    """Every secret value the tests made: none may ever be in the server's log."""

    def sandbox(self, network: dict[str, Any]) -> Sandbox:
        created = httpx.post(
            f"{self.server.url}/sandbox/create",
            headers=self.server.headers,
            json={"network": network},
            timeout=120,
        )
        assert created.status_code == 200, created.text
        sandbox_id = created.json()["sandboxId"]
        return Sandbox.connect(sandbox_id, self.server.api_key, self.server.url)

    def secret(self, name: str) -> str:
        """A fresh secret `name` (replacing one left by an earlier test): its value."""
        value = f"sk-test-{secrets.token_hex(12)}"
        self.values.append(value)
        headers = self.server.headers
        httpx.delete(f"{self.server.url}/secrets/{name}", headers=headers)
        made = httpx.post(
            f"{self.server.url}/secrets", headers=headers, json={"name": name, "value": value}
        )
        assert made.status_code == 200, made.text
        return value


def server_env(state: Path, ca_file: Path) -> dict[str, str]:
    return {
        "INSIEN_EGRESS_ALLOW": "127.0.0.2,127.0.0.3",
        "INSIEN_EGRESS_HOSTS": ",".join(f"{n}={a}" for n, a in NAMES.items()),
        "INSIEN_EGRESS_CA_FILE": str(ca_file),
        "INSIEN_SECRETS_KEY": secrets.token_urlsafe(32),
        "INSIEN_STATE_DIR": str(state),
        "INSIEN_LOG_LEVEL": "debug",
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    good_context, good_cert = tls_context(tmp_path_factory.mktemp("good"), "api.test")
    bad_context, _ = tls_context(tmp_path_factory.mktemp("bad"), "bad.test")
    pkgs_context, pkgs_cert = tls_context(tmp_path_factory.mktemp("pkgs"), "pkgs.test")
    trusted = tmp_path_factory.mktemp("trusted") / "ca.pem"
    trusted.write_bytes(good_cert.read_bytes() + pkgs_cert.read_bytes())
    env = server_env(tmp_path_factory.mktemp("state"), trusted)
    root = tmp_path_factory.mktemp("pkgs-root")
    with (
        echo("127.0.0.2", good_context) as api,
        echo("127.0.0.2") as plain,
        echo("127.0.0.3", bad_context) as bad,
        echo("127.0.0.3") as elsewhere,
        upstream("127.0.0.3", root, pkgs_context) as pkgs,
    ):
        populate(root, f"https://pkgs.test:{pkgs.port}")
        pkgs.RequestHandlerClass = lambda *a: RecordingHandler(*a, directory=str(root))
        process, server = start_server(env, suffix="secrets")
        values: list[str] = []
        try:
            yield World(server, api, plain, bad, elsewhere, pkgs, env, values)
        finally:
            code = stop_server(process)
            log = server.log()
            assert code == 0, log[-3000:]
            leaked = [value for value in values if value in log]
            assert leaked == [], "a secret's value is in the server's log"


def run(box: Sandbox, command: str) -> tuple[int, str]:
    result = box.commands.run(command, timeout=120)
    return result.exit_code, result.stdout + result.stderr


def curl(box: Sandbox, url: str, *extra: str) -> tuple[int, str]:
    args = " ".join(extra)  # the tests' own flags, with $INSIEN_SECRET_... for the shell
    return run(box, f"curl -sS -m 20 {args} {shlex.quote(url)}")


def test_the_rest_api_never_answers_a_value(world: World) -> None:
    url, headers = world.server.url, world.server.headers
    value = world.secret("LISTED")
    again = httpx.post(f"{url}/secrets", headers=headers, json={"name": "LISTED", "value": "x"})
    assert again.status_code == 409
    listed = httpx.get(f"{url}/secrets", headers=headers)
    assert listed.status_code == 200
    assert "LISTED" in [s["name"] for s in listed.json()["secrets"]]
    assert value not in listed.text
    rotated = httpx.put(f"{url}/secrets/LISTED", headers=headers, json={"value": value + "2"})
    assert rotated.status_code == 200
    assert rotated.json()["version"] == 2
    assert value not in rotated.text
    world.values.append(value + "2")
    missing = httpx.put(f"{url}/secrets/NOPE", headers=headers, json={"value": "x"})
    assert missing.status_code == 404
    bad = httpx.post(f"{url}/secrets", headers=headers, json={"name": "X", "value": "a\nb"})
    assert bad.status_code == 400
    assert "a\nb" not in bad.text
    assert httpx.delete(f"{url}/secrets/LISTED", headers=headers).status_code == 200
    assert httpx.delete(f"{url}/secrets/LISTED", headers=headers).status_code == 404
    # Binding a secret that does not exist is refused at create, naming it.
    refused = httpx.post(
        f"{url}/sandbox/create",
        headers=headers,
        json={
            "network": {
                "allowOut": ["api.test"],
                "secrets": [{"secret": "LISTED", "hosts": ["api.test"]}],
            }
        },
    )
    assert refused.status_code == 400
    assert "LISTED" in refused.text
    document = httpx.get(f"{url}/openapi.json").text
    assert all(v not in document for v in world.values)


def test_curl_and_urllib_carry_the_real_secret_and_the_sandbox_holds_none(world: World) -> None:
    token = world.secret("TOKEN")
    key = world.secret("KEY")
    api, plain, other = world.api.port, world.plain.port, world.elsewhere.port
    network = {
        "allowOut": ["api.test", "plain.test", "elsewhere.test"],
        "secrets": [
            {
                "secret": "TOKEN",
                "hosts": [f"api.test:{api}"],
                "header": "Authorization: Bearer {secret}",
            },
            {"secret": "KEY", "hosts": ["plain.test", "api.test"], "body": True},
        ],
    }
    with world.sandbox(network) as box:
        # curl over HTTPS, trusting the server's CA through CURL_CA_BUNDLE alone.
        code, out = curl(box, f"https://api.test:{api}/v1/chat?q=1", "-f")
        assert code == 0, out
        got = json.loads(out)
        assert got["headers"]["authorization"] == f"Bearer {token}"
        assert got["path"] == "/v1/chat?q=1"
        # Python's urllib with its default context (SSL_CERT_FILE), and a placeholder in a
        # header and in a body, swapped on the way.
        script = (
            "import os, urllib.request\n"
            f"request = urllib.request.Request('https://api.test:{api}/v1/x', method='POST',\n"
            "    data=('key=' + os.environ['INSIEN_SECRET_KEY']).encode(),\n"
            "    headers={'X-Key': os.environ['INSIEN_SECRET_KEY']})\n"
            "print(urllib.request.urlopen(request).read().decode())\n"
        )
        code, out = run(box, f"python3 -c {shlex.quote(script)}")
        assert code == 0, out
        got = json.loads(out)
        assert got["headers"]["authorization"] == f"Bearer {token}"
        assert got["headers"]["x-key"] == key
        assert got["body"] == f"key={key}"
        # In the path too (`/bot<token>/...` APIs); the audit keeps the placeholder (the
        # module's end checks the server's log holds no value).
        code, out = run(box, f'curl -sSf -m 20 "https://api.test:{api}/bot$INSIEN_SECRET_KEY/send"')
        assert code == 0, out
        assert json.loads(out)["path"] == f"/bot{key}/send"
        # Plain HTTP: the placeholder swapped in a header.
        code, out = curl(
            box, f"http://plain.test:{plain}/p", "-f", '-H "X-Key: $INSIEN_SECRET_KEY"'
        )
        assert code == 0, out
        assert json.loads(out)["headers"]["x-key"] == key
        assert "authorization" not in json.loads(out)["headers"]  # TOKEN is for api.test only
        # The placeholder sent anywhere else is refused, naming the binding; nothing left.
        before = len(world.elsewhere.received)
        code, out = curl(
            box, f"http://elsewhere.test:{other}/steal", "-i", '-H "X: $INSIEN_SECRET_KEY"'
        )
        assert out.startswith("HTTP/1.1 403"), out
        assert "secret binding 'KEY'" in out
        assert len(world.elsewhere.received) == before
        # What the sandbox holds: placeholders, the CA's certificate, never a value.
        code, env = run(box, "env")
        placeholder = next(
            line.split("=", 1)[1]
            for line in env.splitlines()
            if line.startswith("INSIEN_SECRET_KEY=")
        )
        assert placeholder.startswith("insien-secret-")
        assert "SSL_CERT_FILE=/etc/insien/ca-bundle.pem" in env
        for value in (token, key):
            assert value not in env
            # The pattern comes through a pipe, so no command line here holds it.
            pattern = f"<(echo {base64.b64encode(value.encode()).decode()} | base64 -d)"
            search = (
                "timeout 100 grep -rIlsF --exclude-dir=proc --exclude-dir=sys "
                f"--exclude-dir=dev -f {pattern} / ; cat /proc/[0-9]*/environ "
                f"/proc/[0-9]*/cmdline 2>/dev/null | grep -caF -f {pattern}"
            )
            code, out = run(box, f"bash -c {shlex.quote(search)}")
            assert out.strip() == "0", out
        # Audit: the uses are counted (the events are checked in the attack tests' server).
        network_info = httpx.get(
            f"{world.server.url}/sandboxes/{box.sandbox_id}/network", headers=world.server.headers
        ).json()
        assert network_info["egress"]["secretsUsed"] == 6  # TOKEN 3 times, KEY 3 times
        assert network_info["secrets"][1]["placeholder"] == placeholder


def test_rotation_and_deletion_apply_to_the_next_request(world: World) -> None:
    first = world.secret("ROTATED")
    api = world.api.port
    network = {
        "allowOut": ["api.test"],
        "secrets": [{"secret": "ROTATED", "hosts": ["api.test"], "header": "X-Api-Key: {secret}"}],
    }
    with world.sandbox(network) as box:
        _, out = curl(box, f"https://api.test:{api}/", "-f")
        assert json.loads(out)["headers"]["x-api-key"] == first
        second = f"sk-test-{secrets.token_hex(12)}"
        world.values.append(second)
        rotated = httpx.put(
            f"{world.server.url}/secrets/ROTATED",
            headers=world.server.headers,
            json={"value": second},
        )
        assert rotated.status_code == 200
        _, out = curl(box, f"https://api.test:{api}/", "-f")
        assert json.loads(out)["headers"]["x-api-key"] == second
        deleted = httpx.delete(f"{world.server.url}/secrets/ROTATED", headers=world.server.headers)
        assert deleted.status_code == 200
        before = len(world.api.received)
        _code, out = curl(box, f"https://api.test:{api}/", "-i")
        assert "\r\n\r\nHTTP/1.1 403 Forbidden" in out, out  # after CONNECT's 200
        assert "'ROTATED'" in out
        assert "does not exist" in out
        assert len(world.api.received) == before


MEMORY_SCAN = """
import hashlib, re, sys, urllib.request
url, half, digest, size = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
for _ in range(3):
    assert urllib.request.urlopen(url).read() == b"ok"
found = 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        for at in (m.start() for m in re.finditer(re.escape(half), chunk)):
            if hashlib.sha256(chunk[at : at + size]).hexdigest() == digest:
                found += 1
print(found)
"""


def test_the_memory_of_a_process_that_used_a_secret_holds_none_of_it(world: World) -> None:
    # The value goes into the request after it left the sandbox: the process that sent the
    # requests never held it. It searches its own memory for the value: given only its first
    # half and the digest of the whole, so the search itself does not bring it in.
    value = world.secret("INMEMORY")
    network = {
        "allowOut": ["api.test"],
        "secrets": [{"secret": "INMEMORY", "hosts": ["api.test"], "header": "X-Key: {secret}"}],
    }
    with world.sandbox(network) as box:
        box.files.write("/tmp/scan.py", MEMORY_SCAN)
        half = value[: len(value) // 2]
        digest = hashlib.sha256(value.encode()).hexdigest()
        url = f"https://api.test:{world.api.port}/quiet"
        code, out = run(box, f"python3 /tmp/scan.py {url} {half} {digest} {len(value)}")
        assert code == 0, out
        assert out.strip() == "0", out
        assert world.api.received[-1]["headers"]["X-Key"] == value  # it did go out


def test_an_upstream_with_a_bad_certificate_is_refused(world: World) -> None:
    world.secret("BADCERT")
    bad = world.bad.port
    network = {
        "allowOut": ["bad.test"],
        "secrets": [{"secret": "BADCERT", "hosts": ["bad.test"], "header": "X-K: {secret}"}],
    }
    with world.sandbox(network) as box:
        _code, out = curl(box, f"https://bad.test:{bad}/", "-i")
        assert "\r\n\r\nHTTP/1.1 502 Bad Gateway" in out, out
        assert "not trusted" in out
        assert world.bad.received == []


def test_hosts_without_a_binding_keep_the_untouched_tunnel(world: World) -> None:
    """TLS to a host no binding names is not opened by the server: the sandbox's client
    sees the upstream's own certificate (which it does not trust, so curl refuses it)."""
    world.secret("ONLYPLAIN")
    network = {
        "allowOut": ["api.test", "plain.test"],
        "secrets": [{"secret": "ONLYPLAIN", "hosts": ["plain.test"]}],
    }
    with world.sandbox(network) as box:
        code, out = curl(box, f"https://api.test:{world.api.port}/", "-f")
        assert code == 60, out  # curl: the peer's certificate is not trusted (it is the test's)
        code, out = curl(box, f"https://api.test:{world.api.port}/", "-f", "-k")
        assert code == 0, out
        assert "x-k" not in json.loads(out)["headers"]


def test_bindings_outlive_a_server_restart(
    world: World,
    restartable: Restartable,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Kept in the sealed note with the agent: a SIGKILLed server comes back adding them."""
    env = {**world.env, "INSIEN_STATE_DIR": str(tmp_path)}
    server = restartable.start(**env)
    value = f"sk-test-{secrets.token_hex(12)}"
    world.values.append(value)
    made = httpx.post(
        f"{server.url}/secrets", headers=server.headers, json={"name": "KEPT", "value": value}
    )
    assert made.status_code == 200, made.text
    created = httpx.post(
        f"{server.url}/sandbox/create",
        headers=server.headers,
        json={
            "network": {
                "allowOut": ["api.test"],
                "secrets": [
                    {
                        "secret": "KEPT",
                        "hosts": ["api.test"],
                        "header": "Authorization: Bearer {secret}",
                    }
                ],
            }
        },
        timeout=120,
    )
    assert created.status_code == 200, created.text
    sandbox_id = created.json()["sandboxId"]
    restartable.kill()
    server = restartable.start(**env)
    with Sandbox.connect(sandbox_id, server.api_key, server.url) as box:
        deadline = time.monotonic() + 30
        while True:  # the restarted server listens anew once it has the link back
            code, out = curl(box, f"https://api.test:{world.api.port}/", "-f")
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 0, out
        assert json.loads(out)["headers"]["authorization"] == f"Bearer {value}"
        box.destroy()
    assert value not in server.log()


def test_pip_and_git_over_https_carry_the_secret(world: World) -> None:
    """pip (PIP_CERT) and git (GIT_SSL_CAINFO) trust the egress CA, and every request they
    make to the bound host, git's POSTs with bodies included, carries the real header."""
    value = world.secret("PKGS")
    port = world.pkgs.port
    network = {
        "allowOut": ["pkgs.test"],
        "secrets": [
            {"secret": "PKGS", "hosts": ["pkgs.test"], "header": "Authorization: Bearer {secret}"}
        ],
    }
    before = len(world.pkgs.requests)
    with world.sandbox(network) as box:
        box.files.write("/tmp/pip.whl", pip_wheel().read_bytes())
        code, out = run(
            box,
            "python3 /tmp/pip.whl/pip download --no-cache-dir --disable-pip-version-check "
            f"--index-url https://pkgs.test:{port}/simple/ --dest /tmp/got {WHEEL_NAME}",
        )
        assert code == 0, out
        code, out = run(box, f"git clone -q https://pkgs.test:{port}/git/demo.git demo")
        assert code == 0, out
        assert box.commands.run("cat demo/README.md").stdout == "cloned through the egress proxy\n"
    made = world.pkgs.requests[before:]
    assert any("/simple/" in line for line in made)
    assert any("POST /git/demo.git/git-upload-pack" in line for line in made)
    assert all(line.endswith(f"auth=Bearer {value}") for line in made), made


NODE_FETCH = """
// Node before 24 leaves HTTPS_PROXY to the program: undici (the library behind Node's fetch,
// Debian's node-undici in the image) is how a program follows it.
const { setGlobalDispatcher, ProxyAgent } = require("undici");
setGlobalDispatcher(new ProxyAgent(process.env.HTTPS_PROXY));
fetch(process.argv[2], { method: "POST", headers: { "X-Key": process.env.INSIEN_SECRET_NODE } })
  .then(async (answer) => console.log(answer.status, await answer.text()));
"""


def test_node_fetch_carries_the_secret(world: World) -> None:
    """Node's global `fetch` (trusting the egress CA through NODE_EXTRA_CA_CERTS) gets the
    header added and its placeholder swapped."""
    value = world.secret("NODE")
    api = world.api.port
    network = {
        "allowOut": ["api.test"],
        "secrets": [
            {"secret": "NODE", "hosts": ["api.test"], "header": "Authorization: Bearer {secret}"}
        ],
    }
    with world.sandbox(network) as box:
        box.files.write("/tmp/fetch.js", NODE_FETCH)
        code, out = run(box, f"node /tmp/fetch.js https://api.test:{api}/v1/node")
        assert code == 0, out
        status, _, body = out.partition(" ")
        assert status == "200", out
        got = json.loads(body)
        assert got["headers"]["authorization"] == f"Bearer {value}"
        assert got["headers"]["x-key"] == value
        assert got["path"] == "/v1/node"


def test_bindings_change_live_and_keep_their_placeholders(world: World) -> None:
    """`PUT /sandbox/<id>/network` adds, keeps and removes bindings of a running sandbox:
    commands started after it see the placeholders (the same ones while a secret stays bound)
    and the proxy adds the secret; removed, both are gone."""
    value = world.secret("LIVE")
    api = world.api.port
    url, headers = world.server.url, world.server.headers
    bound = {
        "allowOut": ["api.test"],
        "secrets": [{"secret": "LIVE", "hosts": ["api.test"], "header": "X-K: {secret}"}],
    }
    with world.sandbox({"allowOut": ["api.test"]}) as box:
        network = f"{url}/sandbox/{box.sandbox_id}/network"
        code, out = curl(box, f"https://api.test:{api}/")
        assert code == 60, out  # no binding: the upstream's own certificate, not trusted here

        def placeholder() -> str:
            return box.commands.run("printenv INSIEN_SECRET_LIVE").stdout.strip()

        assert httpx.put(network, headers=headers, json=bound).status_code == 200
        first = placeholder()
        assert first.startswith("insien-secret-")
        code, out = curl(box, f"https://api.test:{api}/", "-f")
        assert code == 0, out
        assert json.loads(out)["headers"]["x-k"] == value
        again = {**bound, "secrets": [{**bound["secrets"][0], "methods": ["GET"]}]}  # type: ignore[index]
        assert httpx.put(network, headers=headers, json=again).status_code == 200
        assert placeholder() == first
        assert (
            httpx.put(network, headers=headers, json={"allowOut": ["api.test"]}).status_code == 200
        )
        assert placeholder() == ""
        code, out = curl(box, f"https://api.test:{api}/")
        assert code == 60, out
