"""E2B's `network.rules` header transforms and its Secrets API (issue 30), driven by the stock
`e2b` Python SDK exactly as its users write them: `Secret.create`, then
`Sandbox.create(network={"rules": {host: [{"transform": {"headers": {...Secret.fill(name)}}}]}})`.
curl inside the sandbox reaches an HTTPS upstream on 127.0.0.2 (a certificate the server
trusts through INSIEN_EGRESS_CA_FILE), which receives the real header; the sandbox holds only
a placeholder. Two tenants share the server: neither can bind the other's secrets."""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox, SandboxException, Secret, SecretException, SecretNotFoundException

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_e2b_js import SUITE
from tests.e2e.test_secrets import Echo, echo
from tests.e2e.upstreams import tls_context
from tests.tools import require_tool

pytestmark = pytest.mark.docker

ALL_TRAFFIC = "0.0.0.0/0"


@dataclass
class Two:
    """A server with tenants alpha and beta, an HTTPS echo at api.test, and every secret
    value the tests made (none may ever be in the server's log)."""

    server: Server
    alpha: str
    beta: str
    api: Echo
    values: list[str]

    def e2b(self, key: str) -> dict[str, Any]:
        """What the stock SDK's calls take to act as a tenant other than the environment's."""
        return {"api_key": key, "api_url": f"{self.server.url}/e2b"}

    def value(self) -> str:
        made = f"sk-e2b-{secrets.token_hex(12)}"
        self.values.append(made)
        return made


@contextmanager
def two_tenants(folder: Path, suffix: str) -> Iterator[Two]:
    """The server, its tenants and the upstream; at the end, the log is searched for values."""
    keys = {"alpha": new_key(), "beta": new_key()}
    tenants = folder / "tenants.toml"
    tenants.write_text(
        "\n".join(
            f'[tenants.{name}]\nkeys = [{{ id = "{name}", sha256 = "{hash_key(key)}" }}]\n'
            for name, key in keys.items()
        )
    )
    context, cert = tls_context(folder, "api.test")
    env = {
        "INSIEN_TENANTS_FILE": str(tenants),
        "INSIEN_API_KEY": "",
        "INSIEN_EGRESS_ALLOW": "127.0.0.2",
        "INSIEN_EGRESS_HOSTS": "api.test=127.0.0.2",
        "INSIEN_EGRESS_CA_FILE": str(cert),
        "INSIEN_SECRETS_KEY": secrets.token_urlsafe(32),
        "INSIEN_STATE_DIR": str(folder / "state"),
        "INSIEN_LOG_LEVEL": "debug",
    }
    with echo("127.0.0.2", context) as api:
        process, server = start_server(env, suffix=suffix)
        two = Two(server, keys["alpha"], keys["beta"], api, [])
        try:
            with pytest.MonkeyPatch.context() as patch:  # the SDK as its users point it
                patch.setenv("E2B_API_URL", f"{server.url}/e2b")
                patch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
                patch.setenv("E2B_API_KEY", two.alpha)
                yield two
        finally:
            code = stop_server(process)
            log = server.log()
            assert code == 0, log[-3000:]
            assert [v for v in two.values if v in log] == [], "a secret's value is in the log"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    with two_tenants(tmp_path_factory.mktemp("e2b-rules"), "e2b-rules") as made:
        yield made


def rule(host: str, header: str, value: str) -> dict[str, Any]:
    return {host: [{"transform": {"headers": {header: value}}}]}


def test_the_secrets_api_takes_values_and_never_answers_them(two: Two) -> None:
    value = two.value()
    info = Secret.create("upstream-token", value, metadata={"description": "for api.test"})
    assert info.name == "upstream_token"  # E2B's canonical form, in Insien's naming
    assert info.secret_id.startswith("sec_")
    assert info.version == 1
    assert info.metadata == {"description": "for api.test"}
    assert Secret.get_info(info.secret_id).name == "upstream_token"
    assert Secret.get_info("UPSTREAM-TOKEN").secret_id == info.secret_id
    assert Secret.exists("upstream-token")
    assert not Secret.exists("nothing-here")
    with pytest.raises(SecretException, match="409"):
        Secret.create("upstream_token", "another")
    with pytest.raises(SecretException, match="metadata holds only"):
        Secret.create("tagged", "v", metadata={"team": "a"})
    newer = two.value()
    updated = Secret.update("upstream-token", newer)
    assert updated.version == 2
    assert updated.metadata == {"description": "for api.test"}
    listed = Secret.list(limit=1)
    page = listed.next_items()
    assert [s.name for s in page] == ["upstream_token"]
    assert not listed.has_next
    # The same secret through Insien's own route: one store.
    own = httpx.get(f"{two.server.url}/secrets", headers={"X-API-Key": two.alpha}).json()
    assert [s["name"] for s in own["secrets"]] == ["upstream_token"]
    # No answer of any route holds a value.
    base = f"{two.server.url}/e2b/secrets"
    key = {"X-API-Key": two.alpha}
    answers = [
        httpx.get(base, headers=key).text,
        httpx.get(f"{base}/upstream-token", headers=key).text,
    ]
    assert all(value not in text and newer not in text for text in answers)
    assert Secret.destroy(info.secret_id) is True
    assert Secret.destroy("upstream-token") is False
    with pytest.raises(SecretNotFoundException):
        Secret.get_info("upstream-token")


def test_a_header_rule_reaches_the_upstream_and_the_sandbox_holds_nothing(two: Two) -> None:
    value = two.value()
    Secret.create("api-token", value)
    port = two.api.port
    sbx = Sandbox.create(
        network={
            "allow_out": ["api.test"],
            "deny_out": [ALL_TRAFFIC],
            "rules": rule("api.test", "Authorization", f"Bearer {Secret.fill('api-token')}"),
        }
    )
    try:
        before = len(two.api.received)
        # The echo answers what it got: the sandbox must not see that, so it keeps only the code.
        fetch = f"curl -sS -m 20 -o /dev/null -w '%{{http_code}}' https://api.test:{port}/v1/models"
        assert sbx.commands.run(fetch, timeout=60).stdout == "200"
        got = two.api.received[before]
        assert got["headers"]["authorization"] == f"Bearer {value}"
        assert got["path"] == "/v1/models"
        # What the sandbox holds: the placeholder, never the value.
        env = sbx.commands.run("env").stdout
        assert "INSIEN_SECRET_API_TOKEN=insien-secret-" in env
        assert value not in env
        pattern = f"<(echo {base64.b64encode(value.encode()).decode()} | base64 -d)"
        search = (
            "timeout 60 grep -rIlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev"
            f" -f {pattern} / ; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null"
            f" | grep -caF -f {pattern}"
        )
        found = sbx.commands.run(f"bash -c {shlex.quote(search)} || true", timeout=90)
        assert found.stdout.strip() == "0", found.stdout
        # E2B's info answers the rule as it was written: the secret's name, not its value.
        info = httpx.get(
            f"{two.server.url}/e2b/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": two.alpha}
        )
        assert info.json()["network"]["rules"] == rule(
            "api.test", "Authorization", "Bearer ${e2b.secrets.api_token}"
        )
        # A rotation is used from the next request on.
        rotated = two.value()
        Secret.update("api-token", rotated)
        assert sbx.commands.run(fetch, timeout=60).stdout == "200"
        assert two.api.received[-1]["headers"]["authorization"] == f"Bearer {rotated}"
        # update_network replaces the rules (E2B's semantics): a new header, the old one gone.
        sbx.update_network(
            {
                "allow_out": ["api.test"],
                "deny_out": [ALL_TRAFFIC],
                "rules": rule("api.test", "X-Api-Key", Secret.fill("api-token")),
            }
        )
        assert sbx.commands.run(fetch, timeout=60).stdout == "200"
        headers = two.api.received[-1]["headers"]
        assert headers["x-api-key"] == rotated
        assert "authorization" not in headers
    finally:
        sbx.kill()
        Secret.destroy("api-token")


def test_a_rule_insien_cannot_honour_is_a_structured_400(two: Two) -> None:
    Secret.create("held", two.value())
    url = f"{two.server.url}/e2b/sandboxes"
    key = {"X-API-Key": two.alpha}
    cases = {
        "names no secret": rule("api.test", "Authorization", "Bearer sk-literal"),
        "you have no secret 'missing'": rule("api.test", "X-K", Secret.fill("missing")),
        "workload identity": rule("api.test", "X-K", "${e2b.identity.tokens.aws}"),
        "overlap": {
            **rule("a.api.test", "X-K", Secret.fill("held")),
            **rule("*.api.test", "X-L", Secret.fill("held")),
        },
        "is not a host": rule("10.0.0.0/8", "X-K", Secret.fill("held")),
    }
    for says, rules in cases.items():
        answer = httpx.post(url, headers=key, json={"network": {"rules": rules}}, timeout=30)
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["code"] == 400
        assert says in body["message"], body
    # The stock SDK surfaces it as its own error, before any sandbox exists.
    with pytest.raises(SandboxException, match=r"400: .*names no secret"):
        Sandbox.create(network={"rules": rule("api.test", "X-K", "literal")})
    assert Sandbox.list().next_items() == []
    Secret.destroy("held")


def test_a_rule_naming_another_tenants_secret_is_refused(two: Two) -> None:
    theirs = Secret.create("beta-only", two.value(), **two.e2b(two.beta))
    for name in ("beta-only", theirs.secret_id):
        with pytest.raises(SandboxException, match=r"400: .*you have no secret"):
            Sandbox.create(network={"rules": rule("api.test", "X-K", f"${{e2b.secrets.{name}}}")})
    assert Sandbox.list().next_items() == []
    assert Secret.destroy("beta-only", **two.e2b(two.beta))


def test_the_stock_js_sdk_sends_the_same_rules_and_secrets(two: Two) -> None:
    """tests/e2b_js/secrets_rules.test.mjs: `Secret` and `rules` through the JS SDK."""
    node = require_tool("node", "apt-get install nodejs npm")
    value = two.value()
    before = len(two.api.received)
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "secrets_rules.test.mjs"],
        cwd=SUITE,
        env={**os.environ, "SECRET_VALUE": value, "API_PORT": str(two.api.port)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 1" in done.stdout, done.stdout[-3000:]
    got = two.api.received[before:]
    assert [r["headers"]["authorization"] for r in got] == [f"Bearer {value}"]
