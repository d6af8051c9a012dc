"""The secret store, bindings, the request rewriting and the egress CA of issue 30, without
Docker (the running service is tests/e2e/test_secrets.py)."""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path

import pytest

from insien.egress import NetworkPolicy, RuleError
from insien.secrets import inject
from insien.secrets.ca import EgressCA
from insien.secrets.store import (
    SecretError,
    SecretExists,
    SecretNotFound,
    SecretStore,
    SecretsUnavailable,
    load_key,
)

KEY = "k" * 40
VALUE = "sk-live-0123456789abcdef"


def store(folder: Path, key: str | None = KEY) -> SecretStore:
    return SecretStore(folder, load_key(key, None))


async def value(folder: Path, tenant: str, name: str, key: str | None = KEY) -> str | None:
    """What a fresh store (a restarted server) reads back for the proxy."""
    fresh = store(folder, key)
    await fresh.load(tenant)
    return fresh.value(tenant, name)


def check_sealed(folder: Path) -> None:
    """One file, private to the server, that does not hold the value."""
    files = list(folder.rglob("*.json"))
    assert len(files) == 1
    assert VALUE not in files[0].read_text()
    assert files[0].stat().st_mode & 0o077 == 0


def copy_to_other_tenant(folder: Path, name: str) -> None:
    """The secret's file, copied as is into the other tenant's folder."""
    mine = next(p for p in folder.rglob("*.json") if json.loads(p.read_text())["name"] == name)
    theirs = next(p.parent for p in folder.rglob("*.json") if p.parent != mine.parent)
    (theirs / mine.name).write_bytes(mine.read_bytes())


async def test_values_are_encrypted_at_rest_and_never_listed(tmp_path: Path) -> None:
    secrets = store(tmp_path)
    made = await secrets.create("t1", "OPENAI", VALUE, "the model provider")
    assert (made.name, made.version) == ("OPENAI", 1)
    check_sealed(tmp_path)
    assert [s.name for s in await secrets.list("t1")] == ["OPENAI"]
    assert VALUE not in repr(await secrets.list("t1"))
    # A fresh store (a restarted server) reads it back with the same key only.
    assert await value(tmp_path, "t1", "OPENAI") == VALUE
    assert await value(tmp_path, "t1", "OPENAI", "x" * 40) is None
    # Another tenant has none of it.
    assert await value(tmp_path, "t2", "OPENAI") is None
    assert await store(tmp_path).list("t2") == []


async def test_a_file_moved_to_another_tenant_does_not_open(tmp_path: Path) -> None:
    secrets = store(tmp_path)
    await secrets.create("t1", "TOKEN", VALUE)
    await secrets.create("t2", "OTHER", "x")
    copy_to_other_tenant(tmp_path, "TOKEN")
    assert await value(tmp_path, "t2", "TOKEN") is None


async def test_rotate_and_delete_take_effect_at_once(tmp_path: Path) -> None:
    secrets = store(tmp_path)
    await secrets.create("t1", "TOKEN", "one")
    info = await secrets.rotate("t1", "TOKEN", "two")
    assert info.version == 2
    assert secrets.value("t1", "TOKEN") == "two"
    assert await value(tmp_path, "t1", "TOKEN") == "two"
    await secrets.delete("t1", "TOKEN")
    assert secrets.value("t1", "TOKEN") is None
    assert await value(tmp_path, "t1", "TOKEN") is None
    with pytest.raises(SecretNotFound):
        await secrets.rotate("t1", "TOKEN", "three")
    with pytest.raises(SecretNotFound):
        await secrets.delete("t1", "TOKEN")


async def test_what_the_store_refuses(tmp_path: Path) -> None:
    secrets = store(tmp_path)
    await secrets.create("t1", "Token", "v")
    with pytest.raises(SecretExists):
        await secrets.create("t1", "TOKEN", "v")  # names are unique whatever their case
    for bad in ("line\r\nX-Evil: 1", "nul\x00", "", "x" * 9000):
        with pytest.raises(SecretError) as caught:
            await secrets.create("t1", "OTHER", bad)
        assert bad not in str(caught.value) or not bad
    for name in ("1A", "a-b", "x" * 65, "../etc"):
        with pytest.raises(SecretError):
            await secrets.create("t1", name, "v")
    with pytest.raises(ValueError, match="at least 32"):
        load_key("short", None)
    keyless = store(tmp_path, None)
    assert not keyless.available
    with pytest.raises(SecretsUnavailable):
        await keyless.list("t1")
    with pytest.raises(SecretsUnavailable):
        await keyless.load("t1")
    assert keyless.value("t1", "Token") is None


def test_value_never_reads_the_disk(tmp_path: Path) -> None:
    """`value` runs in the event loop, so a tenant never loaded is a caller's bug, not a read."""
    with pytest.raises(RuntimeError, match="load"):
        store(tmp_path).value("t1", "Token")


def test_the_key_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    assert load_key(None, tmp_path / "key") == load_key(KEY, None)


def bindings(*items: dict[str, object]) -> NetworkPolicy:
    return NetworkPolicy.of(["*"], secrets=items)


def test_bindings_parse_share_placeholders_and_keep_them() -> None:
    policy = bindings(
        {
            "secret": "OPENAI",
            "hosts": ["api.openai.com"],
            "header": "Authorization: Bearer {secret}",
        },
        {"secret": "OPENAI", "hosts": ["*.openai.com:443"], "methods": ["post"], "paths": ["/v1/"]},
        {"secret": "gh", "hosts": ["github.com"]},
    )
    first, second, third = policy.secrets
    assert first.placeholder == second.placeholder != third.placeholder
    assert first.placeholder.startswith("insien-secret-")
    assert policy.placeholder_environment() == {
        "INSIEN_SECRET_OPENAI": first.placeholder,
        "INSIEN_SECRET_GH": third.placeholder,
    }
    assert second.methods == ("POST",)
    # The sealed copy gives back the same placeholders.
    again = NetworkPolicy.from_json(json.loads(json.dumps(policy.to_json())))
    assert again == policy
    assert "secrets" not in NetworkPolicy.of(["*"]).to_json()
    # A policy replaced live keeps the placeholders the sandbox already has.
    kept = NetworkPolicy.of(
        ["*"], secrets=[{"secret": "gh", "hosts": ["x.org"]}], keep=policy.placeholders()
    )
    assert kept.secrets[0].placeholder == third.placeholder


def test_host_patterns() -> None:
    binding = bindings(
        {"secret": "A", "hosts": ["api.example.com", "*.svc.example.com:8443", "10.0.0.5"]}
    ).secrets[0]
    assert binding.covers_host("api.example.com", 443)
    assert binding.covers_host("API.example.com.", 80)
    assert binding.covers_host("x.svc.example.com", 8443)
    assert not binding.covers_host("x.svc.example.com", 443)
    assert not binding.covers_host("svc.example.com", 8443)
    assert not binding.covers_host("api.example.com.evil.org", 443)
    assert binding.covers_host("10.0.0.5", 443)
    assert not binding.covers_host("10.0.0.6", 443)


@pytest.mark.parametrize(
    "bad",
    [
        {"secret": "A", "hosts": []},
        {"secret": "A", "hosts": ["10.0.0.0/8"]},
        {"secret": "A", "hosts": ["public"]},
        {"secret": "A", "hosts": ["x.org"], "header": "Authorization: Bearer"},
        {"secret": "A", "hosts": ["x.org"], "header": "X: {secret}\r\nEvil: 1"},
        {"secret": "A", "hosts": ["x.org"], "header": "Bad Name: {secret}"},
        {"secret": "A", "hosts": ["x.org"], "paths": ["v1"]},
        {"secret": "A-B", "hosts": ["x.org"]},
    ],
)
def test_bad_bindings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(RuleError):
        bindings(bad)


def test_case_twins_are_refused() -> None:
    with pytest.raises(RuleError):
        bindings({"secret": "a", "hosts": ["x.org"]}, {"secret": "A", "hosts": ["y.org"]})


POLICY = bindings(
    {"secret": "API", "hosts": ["api.test"], "header": "Authorization: Bearer {secret}"},
    {
        "secret": "POSTONLY",
        "hosts": ["api.test"],
        "methods": ["POST"],
        "paths": ["/v1/"],
        "body": True,
    },
    {"secret": "ELSEWHERE", "hosts": ["other.test"]},
)
VALUES = {"API": "s3cret-api", "POSTONLY": "s3cret-post", "ELSEWHERE": "s3cret-else"}
P = {b.secret: b.placeholder for b in POLICY.secrets}


def run(head: str, host: str = "api.test", values: dict[str, str] = VALUES) -> inject.Outcome:
    return inject.apply(head.encode(), host, 443, POLICY.secrets, values.get)


def test_a_header_is_set_and_placeholders_swapped() -> None:
    head = (
        f"GET /x?k={P['API']} HTTP/1.1\r\nHost: api.test\r\nAuthorization: x\r\n"
        f"X-K: {P['API']}\r\nConnection: keep-alive\r\n\r\n"
    )
    outcome = run(head)
    assert outcome.head is not None
    text = outcome.head.render().decode()
    assert "Authorization: Bearer s3cret-api\r\n" in text
    assert "Authorization: x" not in text
    assert "X-K: s3cret-api" in text
    assert "k=s3cret-api" in text
    assert "Connection: close" in text
    assert "keep-alive" not in text
    assert P["API"] not in text
    assert outcome.used == ["API"]
    assert outcome.body_swaps == {}


def test_a_value_swapped_into_the_path_stays_out_of_the_audit() -> None:
    outcome = run(f"GET /bot{P['API']}/send HTTP/1.1\r\n\r\n")
    assert outcome.head is not None
    assert outcome.head.target == "/bots3cret-api/send"
    assert outcome.path == f"/bot{P['API']}/send"


def test_methods_and_paths_limit_a_binding() -> None:
    get = run(f"GET /v1/x HTTP/1.1\r\nX: {P['POSTONLY']}\r\n\r\n")
    assert get.head is None
    assert "POSTONLY" in get.refusal
    assert "(POST)" in get.refusal
    post = run(f"POST /v1/x HTTP/1.1\r\nX: {P['POSTONLY']}\r\n\r\n")
    assert post.head is not None
    assert "X: s3cret-post" in post.head.render().decode()
    assert post.body_swaps == {P["POSTONLY"].encode(): b"s3cret-post"}
    assert sorted(post.used) == ["API", "POSTONLY"]
    wrong_path = run(f"POST /v2/x HTTP/1.1\r\nX: {P['POSTONLY']}\r\n\r\n")
    assert wrong_path.head is None


def test_a_placeholder_for_another_host_is_refused_naming_the_binding() -> None:
    outcome = run(f"GET / HTTP/1.1\r\nAuthorization: Bearer {P['ELSEWHERE']}\r\n\r\n")
    assert outcome.head is None
    assert outcome.status == 403
    assert "'ELSEWHERE'" in outcome.refusal
    assert "other.test" in outcome.refusal
    assert "s3cret" not in outcome.refusal
    unbound = run(f"GET / HTTP/1.1\r\nX: {P['API']}\r\n\r\n", host="evil.test")
    assert unbound.head is None
    assert "'API'" in unbound.refusal
    # Without a placeholder, a request to a host no binding names passes untouched.
    plain = run("GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", host="evil.test")
    assert plain.head is not None
    assert plain.used == []
    assert P["ELSEWHERE"].encode() in plain.forbidden


def test_a_deleted_secret_refuses_the_request() -> None:
    outcome = run("GET / HTTP/1.1\r\n\r\n", values={})
    assert outcome.head is None
    assert "'API'" in outcome.refusal
    assert "does not exist" in outcome.refusal


def test_garbage_is_a_400() -> None:
    assert run("HELLO\r\n\r\n").status == 400


def test_the_scanner_finds_a_placeholder_across_chunks() -> None:
    needle = P["ELSEWHERE"].encode()
    scanner = inject.Scanner({needle: "ELSEWHERE"})
    assert scanner.feed(b"x" * 100 + needle[:10]) is None
    assert scanner.feed(needle[10:] + b"y") == "ELSEWHERE"
    assert inject.Scanner({}).feed(needle) is None


def test_the_ca_signs_leaves_a_client_trusting_it_accepts(tmp_path: Path) -> None:
    ca = EgressCA(tmp_path / "ca")
    pem = ca.certificate_pem()
    key = tmp_path / "ca" / "ca-key.pem"
    assert key.stat().st_mode & 0o077 == 0
    assert "PRIVATE" not in pem
    assert EgressCA(tmp_path / "ca").certificate_pem() == pem  # kept across restarts

    def handshake(name: str, trusted: str) -> None:
        to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_out, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = ca.server_context(name).wrap_bio(to_server, server_out, server_side=True)
        client_context = ssl.create_default_context(cadata=trusted)
        client = client_context.wrap_bio(to_client, client_out, server_hostname=name)
        for _ in range(10):
            for side in (client, server):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            to_server.write(client_out.read())
            to_client.write(server_out.read())
        client.do_handshake()

    handshake("api.test", pem)
    other = EgressCA(tmp_path / "other").certificate_pem()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("api.test", other)
