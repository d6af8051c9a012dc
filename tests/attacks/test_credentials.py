"""Every credential against every surface of a sandbox (issue 27, V1 and V2): the table in
docs/security.md ("Credentials and surfaces") is `insien.sandboxes.access.ALLOWED`, and this
file tries each cell on a real server, presenting each token in every way any surface reads
one. Before the second pass, public traffic ran code for anyone (`/execute` on port 49999
with no credential) and the traffic token was the envd token (it opened `process.Process`,
`/files` and the agent WebSocket)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from insien.sandboxes.access import ALLOWED, Surface, Via
from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.docker

DOMAIN = "sandboxes.test"
APP_PORT = 8080


@dataclass(frozen=True)
class Target:
    """A sandbox made through the E2B front, with an app on APP_PORT, and its credentials."""

    sandbox_id: str
    public: bool
    control_token: str
    traffic_token: str
    preview_token: str
    other_port_token: str


@dataclass(frozen=True)
class Probe:
    """One way into one surface: `call(client, target, headers, query)` answers whether the
    request got in."""

    name: str
    surface: Surface
    reads: frozenset[str]
    """Where this surface looks for a token (a header, a query parameter, the cookie)."""
    call: Callable[[httpx.Client, Target, dict[str, str], dict[str, str]], bool]


def _opened(answer: httpx.Response) -> bool:
    if answer.status_code in (401, 403, 404):
        return False
    assert answer.status_code < 300, (answer.status_code, answer.text[:300])
    return True


def _envd(port: int, sandbox_id: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}


def envd_files(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {**_envd(49983, t.sandbox_id), **h}
    return _opened(client.get("/e2b/files", params={"path": "/etc/hostname", **q}, headers=headers))


def envd_start(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {**_envd(49983, t.sandbox_id), **h, "Content-Type": "application/json"}
    answer = client.post(
        "/e2b/filesystem.Filesystem/Stat", params=q, headers=headers, json={"path": "/tmp"}
    )
    return _opened(answer)


def envd_by_host(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {"Host": f"49983-{t.sandbox_id}.{DOMAIN}", **h}
    return _opened(client.get("/files", params={"path": "/etc/hostname", **q}, headers=headers))


def execute(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {**_envd(49999, t.sandbox_id), **h}
    answer = client.post("/e2b/execute", params=q, headers=headers, json={"code": "1 + 1"})
    return _opened(answer)


def execute_by_host(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {"Host": f"49999-{t.sandbox_id}.{DOMAIN}", **h}
    return _opened(client.post("/execute", params=q, headers=headers, json={"code": "1 + 1"}))


def contexts(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    return _opened(
        client.get("/e2b/contexts", params=q, headers={**_envd(49999, t.sandbox_id), **h})
    )


def agent_socket(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    return _upgraded(client, f"/agent/{t.sandbox_id}", h, q)


def port_by_path(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    return _opened(client.get(f"/sandbox/{t.sandbox_id}/ports/{APP_PORT}/", params=q, headers=h))


def port_by_host(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    headers = {"Host": f"{APP_PORT}-{t.sandbox_id}.{DOMAIN}", **h}
    return _opened(client.get("/", params=q, headers=headers))


def port_by_e2b_headers(
    client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]
) -> bool:
    return _opened(client.get("/e2b/", params=q, headers={**_envd(APP_PORT, t.sandbox_id), **h}))


def tcp_tunnel(client: httpx.Client, t: Target, h: dict[str, str], q: dict[str, str]) -> bool:
    return _upgraded(client, f"/sandbox/{t.sandbox_id}/ports/{APP_PORT}/tcp", h, q)


def _upgraded(client: httpx.Client, path: str, h: dict[str, str], q: dict[str, str]) -> bool:
    """Whether the WebSocket handshake is accepted (101); nothing is spoken after it (a
    WebSocket client's background reader once raced the server's close here)."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    with client.stream("GET", path, params=q, headers={**upgrade, **h}) as answer:
        status = answer.status_code
    if status == 101:
        return True
    assert status in (401, 403, 404), status
    return False


ENVD = frozenset({"x-access-token", "e2b-traffic-access-token"})
HTTP_PORT = frozenset({"e2b-traffic-access-token", "insien_token", "cookie"})
PROBES = [
    Probe("envd /files", Surface.CONTROL, ENVD, envd_files),
    Probe("envd Filesystem/Stat", Surface.CONTROL, ENVD, envd_start),
    Probe("envd by host", Surface.CONTROL, ENVD, envd_by_host),
    Probe("interpreter /execute", Surface.CONTROL, ENVD, execute),
    Probe("interpreter /execute by host", Surface.CONTROL, ENVD, execute_by_host),
    Probe("agent WebSocket", Surface.CONTROL, frozenset({"token"}), agent_socket),
    Probe("interpreter /contexts", Surface.CONTEXTS, ENVD, contexts),
    Probe("port by path", Surface.PORT, HTTP_PORT, port_by_path),
    Probe("port by host", Surface.PORT, HTTP_PORT, port_by_host),
    Probe("port by E2B headers", Surface.PORT, HTTP_PORT, port_by_e2b_headers),
    # preview tokens are for HTTP: the raw TCP WebSocket takes the key or the traffic token
    Probe("port as TCP", Surface.PORT, frozenset({"e2b-traffic-access-token"}), tcp_tunnel),
]
OWN_PLACES = {
    Via.CONTROL_TOKEN: frozenset({"x-access-token", "token"}),
    Via.TRAFFIC_TOKEN: frozenset({"e2b-traffic-access-token"}),
    Via.PREVIEW_TOKEN: frozenset({"insien_token", "cookie"}),
}
"""Where each token is meant to be presented; anywhere else it is no credential."""


def presentations(token: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """Every place any surface looks for a token: each is tried alone."""
    return [
        ("x-access-token", {"X-Access-Token": token}, {}),
        ("e2b-traffic-access-token", {"E2B-Traffic-Access-Token": token}, {}),
        ("token", {}, {"token": token}),
        ("insien_token", {}, {"insien_token": token}),
        ("cookie", {"Cookie": f"insien_port={token}"}, {}),
    ]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Server, Target, Target, Target]]:
    """A server, a public and a private sandbox with an app on APP_PORT, and a third sandbox
    whose tokens must open nothing of the others."""
    process, server = start_server(
        {"INSIEN_DOMAIN": DOMAIN, "INSIEN_POOL_SIZE": "0"}, "credentials"
    )
    made: list[str] = []
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:

            def target(public: bool) -> Target:
                body: dict[str, Any] = {"templateID": "base"}
                if not public:
                    body["network"] = {"allowPublicTraffic": False}
                created = client.post("/e2b/sandboxes", json=body).raise_for_status().json()
                sandbox_id = created["sandboxID"]
                made.append(sandbox_id)
                with Sandbox.connect(sandbox_id, server.api_key, server.url) as box:
                    box.commands.run(f"python3 -m http.server {APP_PORT}", background=True)
                    probe = f"import socket; socket.create_connection(('127.0.0.1', {APP_PORT}))"
                    deadline = time.monotonic() + 30
                    while box.commands.run("python3", ["-c", probe]).exit_code != 0:
                        assert time.monotonic() < deadline, "the app did not start"
                        time.sleep(0.1)

                def preview(port: int) -> str:
                    url = f"/sandboxes/{sandbox_id}/ports/{port}/url"
                    made_url = client.post(url, json={"expires": 600}).raise_for_status()
                    return str(made_url.json()["token"])

                assert created["envdAccessToken"] != created["trafficAccessToken"]
                return Target(
                    sandbox_id,
                    public,
                    created["envdAccessToken"],
                    created["trafficAccessToken"],
                    preview(APP_PORT),
                    preview(APP_PORT + 1),
                )

            yield server, target(True), target(False), target(False)
            for sandbox_id in made:
                client.delete(f"/e2b/sandboxes/{sandbox_id}")
    finally:
        stop_server(process)


def expected(via: Via | None, probe: Probe, place: str | None) -> bool:
    """Whether `via`, presented at `place` (None: a header of its own, the key), opens the
    probe's surface."""
    if via is None:
        return False
    if place is not None and place not in OWN_PLACES[via] & probe.reads:
        return False
    return probe.surface in ALLOWED[via]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_every_credential_opens_only_its_own_surfaces(
    world: tuple[Server, Target, Target, Target], probe: Probe
) -> None:
    server, public, private, other = world
    wrong: list[str] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for target in (public, private):
            # (what is presented, the credential it is for this target, or None if nothing)
            Try = tuple[str, dict[str, str], dict[str, str], Via | None, str | None]
            tries: list[Try] = [
                ("no credential", {}, {}, None, None),
                ("the key", server.headers, {}, Via.KEY, None),
                ("a wrong key", {"X-API-Key": "insien_" + "0" * 40}, {}, None, None),
            ]
            tokens: list[tuple[str, str, Via | None]] = [
                ("control token", target.control_token, Via.CONTROL_TOKEN),
                ("traffic token", target.traffic_token, Via.TRAFFIC_TOKEN),
                ("preview token", target.preview_token, Via.PREVIEW_TOKEN),
                ("another port's preview token", target.other_port_token, None),
                ("another sandbox's control token", other.control_token, None),
                ("another sandbox's traffic token", other.traffic_token, None),
            ]
            for name, token, via in tokens:
                for where, headers, query in presentations(token):
                    tries.append((f"{name} as {where}", headers, query, via, where))
            for name, headers, query, via, place in tries:
                want = expected(via, probe, place)
                if target.public and not want:  # public traffic opens user ports whatever else
                    want = expected(Via.PUBLIC, probe, None)
                client.cookies.clear()  # a preview cookie from an earlier try is no credential
                got = probe.call(client, target, headers, query)
                if got != want:
                    kind = "public" if target.public else "private"
                    wrong.append(f"{name} on a {kind} sandbox: {'opened' if got else 'refused'}")
    assert not wrong, f"{probe.name}: " + "; ".join(wrong)


def test_the_table_is_what_the_issue_demands() -> None:
    """The cells that were the vulnerabilities, stated plainly."""
    assert Surface.CONTROL not in ALLOWED[Via.PUBLIC]
    assert Surface.CONTEXTS not in ALLOWED[Via.PUBLIC]
    assert Surface.CONTROL not in ALLOWED[Via.TRAFFIC_TOKEN]
    assert Surface.CONTROL not in ALLOWED[Via.PREVIEW_TOKEN]
    assert Surface.PORT not in ALLOWED[Via.CONTROL_TOKEN]
    assert ALLOWED[Via.KEY] == frozenset(Surface)


def test_preview_urls_are_given_on_the_ports_own_origin(
    world: tuple[Server, Target, Target, Target],
) -> None:
    """With INSIEN_DOMAIN, a preview URL names the port's own host (docs/security.md,
    "Preview origins"): the app's answer there is its own, on an origin that is not the API's."""
    server, _, private, _ = world
    with httpx.Client(base_url=server.url, timeout=60) as client:
        made = client.post(
            f"/sandboxes/{private.sandbox_id}/ports/{APP_PORT}/url",
            headers=server.headers,
            json={"expires": 60},
        ).raise_for_status()
        url = httpx.URL(made.json()["url"])
        assert url.host == f"{APP_PORT}-{private.sandbox_id}.{DOMAIN}"
        page = client.get(
            url.path, params=dict(url.params), headers={"Host": str(url.netloc.decode())}
        )
        assert page.status_code == 200
        assert "content-security-policy" not in page.headers  # not sandboxed: its own origin
        assert "Path=/;" in page.headers["set-cookie"]
        by_path = client.get(
            f"/sandbox/{private.sandbox_id}/ports/{APP_PORT}/", params=dict(url.params)
        )
        assert by_path.headers["content-security-policy"].startswith("sandbox ")
