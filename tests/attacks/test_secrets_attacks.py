"""The trust boundary of secrets (issue 30): one tenant cannot list, read, bind, rotate or
delete another's; a sandbox holds placeholders and the egress CA's certificate, never a value
or the CA's key; the Host header does not choose where a secret goes; a server without the
operator's key keeps no secrets. Before issue 30 none of these routes or bindings existed."""

from __future__ import annotations

import base64
import json
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from insien.tenancy.tenants import hash_key, new_key
from insien_sandbox import Sandbox
from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_secrets import NAMES, Echo, echo
from tests.e2e.upstreams import tls_context


@dataclass
class Two:
    server: Server
    state: Path
    alpha: dict[str, str]
    beta: dict[str, str]
    api: Echo
    plain: Echo
    elsewhere: Echo


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    folder = tmp_path_factory.mktemp("secrets-attacks")
    keys = {"alpha": new_key(), "beta": new_key()}
    tenants = folder / "tenants.toml"
    tenants.write_text(
        "\n".join(
            f'[tenants.{name}]\nkeys = [{{ id = "{name}", sha256 = "{hash_key(key)}" }}]\n'
            for name, key in keys.items()
        )
    )
    context, cert = tls_context(folder, "api.test")
    state = folder / "state"
    env = {
        "INSIEN_TENANTS_FILE": str(tenants),
        "INSIEN_API_KEY": "",
        "INSIEN_EGRESS_ALLOW": "127.0.0.2,127.0.0.3",
        "INSIEN_EGRESS_HOSTS": ",".join(f"{n}={a}" for n, a in NAMES.items()),
        "INSIEN_EGRESS_CA_FILE": str(cert),
        "INSIEN_SECRETS_KEY": secrets.token_urlsafe(32),
        "INSIEN_STATE_DIR": str(state),
    }
    with (
        echo("127.0.0.2", context) as api,
        echo("127.0.0.2") as plain,
        echo("127.0.0.3") as elsewhere,
    ):
        process, server = start_server(env, suffix="secrets-attacks")
        try:
            yield Two(
                server,
                state,
                {"X-API-Key": keys["alpha"]},
                {"X-API-Key": keys["beta"]},
                api,
                plain,
                elsewhere,
            )
        finally:
            assert stop_server(process) == 0, server.log()[-3000:]


def sandbox_of(two: Two, headers: dict[str, str], network: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{two.server.url}/sandbox/create", headers=headers, json={"network": network}, timeout=120
    )


def test_another_tenant_cannot_list_bind_rotate_or_delete_your_secrets(two: Two) -> None:
    url = two.server.url
    value = f"alpha-{secrets.token_hex(12)}"
    made = httpx.post(f"{url}/secrets", headers=two.alpha, json={"name": "SHARED", "value": value})
    assert made.status_code == 200, made.text
    listed = httpx.get(f"{url}/secrets", headers=two.beta)
    assert listed.json() == {"secrets": []}
    assert (
        httpx.put(f"{url}/secrets/SHARED", headers=two.beta, json={"value": "x"}).status_code == 404
    )
    assert httpx.delete(f"{url}/secrets/SHARED", headers=two.beta).status_code == 404
    network = {
        "allowOut": ["plain.test"],
        "secrets": [{"secret": "SHARED", "hosts": ["plain.test"], "header": "X-K: {secret}"}],
    }
    refused = sandbox_of(two, two.beta, network)
    assert refused.status_code == 400
    assert "no secret 'SHARED'" in refused.text
    # Beta's own secret of the same name is its own: its sandbox gets beta's value.
    theirs = f"beta-{secrets.token_hex(12)}"
    assert (
        httpx.post(
            f"{url}/secrets", headers=two.beta, json={"name": "SHARED", "value": theirs}
        ).status_code
        == 200
    )
    created = sandbox_of(two, two.beta, network)
    assert created.status_code == 200, created.text
    with Sandbox.connect(created.json()["sandboxId"], two.beta["X-API-Key"], url) as box:
        result = box.commands.run(f"curl -sS -m 20 http://plain.test:{two.plain.port}/")
        assert json.loads(result.stdout)["headers"]["x-k"] == theirs
        box.destroy()
    # Alpha's is untouched by all of it.
    assert httpx.get(f"{url}/secrets", headers=two.alpha).json()["secrets"][0]["version"] == 1


def test_the_host_header_does_not_choose_where_a_secret_goes(two: Two) -> None:
    url = two.server.url
    value = f"host-{secrets.token_hex(12)}"
    httpx.delete(f"{url}/secrets/HOSTED", headers=two.alpha)
    httpx.post(f"{url}/secrets", headers=two.alpha, json={"name": "HOSTED", "value": value})
    network = {
        "allowOut": ["plain.test", "elsewhere.test"],
        "secrets": [{"secret": "HOSTED", "hosts": ["plain.test"], "header": "X-K: {secret}"}],
    }
    created = sandbox_of(two, two.alpha, network)
    assert created.status_code == 200, created.text
    with Sandbox.connect(created.json()["sandboxId"], two.alpha["X-API-Key"], url) as box:
        result = box.commands.run(
            f"curl -sS -m 20 -H 'Host: plain.test' http://elsewhere.test:{two.elsewhere.port}/"
        )
        assert result.exit_code == 0, result.stderr
        assert "x-k" not in json.loads(result.stdout)["headers"]
        assert value not in json.dumps(two.elsewhere.received)
        box.destroy()


def test_a_sandbox_holds_the_ca_certificate_never_its_key(two: Two) -> None:
    url = two.server.url
    httpx.delete(f"{url}/secrets/CAKEY", headers=two.alpha)
    httpx.post(f"{url}/secrets", headers=two.alpha, json={"name": "CAKEY", "value": "v" * 20})
    network = {
        "allowOut": ["api.test"],
        "secrets": [{"secret": "CAKEY", "hosts": ["api.test"], "header": "X-K: {secret}"}],
    }
    created = sandbox_of(two, two.alpha, network)
    assert created.status_code == 200, created.text
    key_pem = (two.state / "egress-ca" / "ca-key.pem").read_text()
    ca_pem = (two.state / "egress-ca" / "ca.pem").read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    with Sandbox.connect(created.json()["sandboxId"], two.alpha["X-API-Key"], url) as box:
        assert box.files.read("/etc/insien/egress-ca.pem") == ca_pem
        listing = box.commands.run("stat -c '%U %a %n' /etc/insien /etc/insien/*").stdout
        assert listing.splitlines() == [
            "root 755 /etc/insien",
            "root 444 /etc/insien/ca-bundle.pem",
            "root 444 /etc/insien/egress-ca.pem",
        ]
        tamper = box.commands.run(
            "echo x >> /etc/insien/ca-bundle.pem || rm -f /etc/insien/ca-bundle.pem; ls /etc/insien"
        )
        assert "ca-bundle.pem" in tamper.stdout
        assert (
            box.commands.run("tail -c 100 /etc/insien/ca-bundle.pem")
            .stdout.strip()
            .endswith("-----END CERTIFICATE-----")
        )
        # No piece of the key is anywhere the sandbox can read (the pattern comes through a
        # pipe: no command line holds it). The search itself finds the certificate.
        for piece, found in ((body[40:80], False), ("".join(ca_pem.splitlines()[1:2])[:40], True)):
            pattern = f"<(echo {base64.b64encode(piece.encode()).decode()} | base64 -d)"
            search = (
                "timeout 100 grep -rIlsF --exclude-dir=proc --exclude-dir=sys "
                f"--exclude-dir=dev -f {pattern} / | head -5"
            )
            out = box.commands.run(f"bash -c {shlex.quote(search)}", timeout=120).stdout
            assert bool(out.strip()) is found, out
        box.destroy()


def test_uses_are_events_without_the_value(two: Two) -> None:
    url = two.server.url
    value = f"event-{secrets.token_hex(12)}"
    httpx.delete(f"{url}/secrets/AUDITED", headers=two.alpha)
    httpx.post(f"{url}/secrets", headers=two.alpha, json={"name": "AUDITED", "value": value})
    network = {
        "allowOut": ["api.test"],
        "secrets": [{"secret": "AUDITED", "hosts": ["api.test"], "header": "X-K: {secret}"}],
    }
    created = sandbox_of(two, two.alpha, network)
    sandbox_id = created.json()["sandboxId"]
    with Sandbox.connect(sandbox_id, two.alpha["X-API-Key"], url) as box:
        result = box.commands.run(f"curl -sS -m 20 -f https://api.test:{two.api.port}/v1/m?q=1")
        assert json.loads(result.stdout)["headers"]["x-k"] == value
        box.destroy()
    found: list[dict[str, Any]] = []
    # `lastEventId` of no run of this server: everything the tenant's history keeps.
    with httpx.stream(
        "GET", f"{url}/events?lastEventId=none-0", headers=two.alpha, timeout=30
    ) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                found.append(event)
                if event["type"] == "secret.used" and event.get("sandboxId") == sandbox_id:
                    break
    used = found[-1]
    assert used["type"] == "secret.used"
    assert value not in json.dumps(found)
    details = {k: used["details"][k] for k in ("secret", "host", "method", "path")}
    assert details == {"secret": "AUDITED", "host": "api.test", "method": "GET", "path": "/v1/m"}
    # Beta sees none of alpha's uses.
    theirs = "".join(stream_for(f"{url}/events?lastEventId=none-0", two.beta))
    assert "insien events" in theirs
    assert sandbox_id not in theirs
    assert "AUDITED" not in theirs


def stream_for(url: str, headers: dict[str, str], seconds: float = 3) -> list[str]:
    """The lines an event stream gives until it is quiet for `seconds`."""
    lines: list[str] = []
    try:
        with httpx.stream("GET", url, headers=headers, timeout=seconds) as events:
            for line in events.iter_lines():  # kept line by line: the timeout ends it
                lines.append(line)
    except httpx.ReadTimeout:
        pass
    return lines


def test_a_server_without_the_key_keeps_no_secrets(tmp_path: Path) -> None:
    process, server = start_server({"INSIEN_STATE_DIR": str(tmp_path)}, suffix="no-secrets-key")
    try:
        answer = httpx.get(f"{server.url}/secrets", headers=server.headers)
        assert answer.status_code == 503
        assert "INSIEN_SECRETS_KEY" in answer.json()["message"]
        made = httpx.post(
            f"{server.url}/secrets", headers=server.headers, json={"name": "A", "value": "v"}
        )
        assert made.status_code == 503
        bound = httpx.post(
            f"{server.url}/sandbox/create",
            headers=server.headers,
            json={
                "network": {
                    "allowOut": ["x.test"],
                    "secrets": [{"secret": "A", "hosts": ["x.test"]}],
                }
            },
        )
        assert bound.status_code == 503
        assert not (tmp_path / "secrets").exists()
    finally:
        assert stop_server(process) == 0
