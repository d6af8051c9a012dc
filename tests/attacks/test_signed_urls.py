"""Signed file URLs (E2B's `upload_url`/`download_url` with `use_signature_expiration`): a URL
signed with the sandbox's envd access token reads or writes one path without any key, through
E2B_SANDBOX_URL's shape (`/e2b/files?...` with `E2b-Sandbox-Id`) or the sandbox's host. It is
a credential for that path, that operation, that user and that sandbox until it expires, and
for nothing else: an expired, altered or borrowed signature is refused (401), and a multipart
upload through it cannot write a second file. Before, every signed URL was refused (the
signature was ignored and no key came with it), so the valid ones here failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from e2b import Sandbox
from e2b.sandbox.signature import get_signature

from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.docker

DOMAIN = "sandboxes.test"


@pytest.fixture(scope="module")
def domain_server() -> Iterator[Server]:
    """A server with INSIEN_DOMAIN, so both of E2B's shapes of a sandbox URL reach it."""
    process, server = start_server({"INSIEN_DOMAIN": DOMAIN}, "signed-urls")
    yield server
    stop_server(process)


@pytest.fixture
def pair(domain_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sandbox]]:
    monkeypatch.setenv("E2B_API_URL", f"{domain_server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{domain_server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", domain_server.api_key)
    made = [Sandbox.create(timeout=300), Sandbox.create(timeout=300)]
    yield made
    for sandbox in made:
        sandbox.kill()


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _files(
    server: Server,
    sandbox_id: str,
    query: dict[str, str],
    *,
    method: str = "GET",
    content: bytes | None = None,
) -> httpx.Response:
    """`/e2b/files` as E2B_SANDBOX_URL's shape sends it: the sandbox named by its header, and
    no key or token at all."""
    url = f"{server.url}/e2b/files?{urlencode(query)}"
    headers = {"E2b-Sandbox-Id": sandbox_id}
    return httpx.request(method, url, headers=headers, content=content, timeout=30)


def _token(sbx: Sandbox) -> str:
    token = sbx._envd_access_token
    assert token
    return token


def test_a_valid_signed_url_works_without_a_key(domain_server: Server, pair: list[Sandbox]) -> None:
    sbx, _ = pair
    upload = sbx.upload_url("signed/upload.txt", use_signature_expiration=120)
    assert "signature=v1_" in upload
    written = httpx.post(
        upload,
        headers={"E2b-Sandbox-Id": sbx.sandbox_id},
        files={"file": ("upload.txt", b"signed bytes")},
        timeout=30,
    )
    assert written.status_code == 200, written.text
    assert written.json()[0]["path"] == "/home/user/signed/upload.txt"
    assert sbx.files.read("signed/upload.txt") == "signed bytes"

    download = sbx.download_url("signed/upload.txt", use_signature_expiration=120)
    read = httpx.get(download, headers={"E2b-Sandbox-Id": sbx.sandbox_id}, timeout=30)
    assert read.status_code == 200
    assert read.content == b"signed bytes"
    # a signature without an expiration is valid for as long as the token it was made with
    forever = _files(domain_server, sbx.sandbox_id, _query(sbx.download_url("signed/upload.txt")))
    assert forever.content == b"signed bytes"
    # the sandbox's own host (INSIEN_DOMAIN) takes the same URL
    by_host = httpx.get(
        f"{domain_server.url}/files?{urlsplit(download).query}",
        headers={"Host": f"49983-{sbx.sandbox_id}.{DOMAIN}"},
        timeout=30,
    )
    assert by_host.content == b"signed bytes"


def test_expired_altered_and_borrowed_signatures_are_refused(
    domain_server: Server, pair: list[Sandbox]
) -> None:
    sbx, other = pair
    sbx.files.write("secret.txt", "only this path")
    sbx.files.write("other.txt", "never through that signature")
    signed = _query(sbx.download_url("secret.txt", use_signature_expiration=120))
    assert _files(domain_server, sbx.sandbox_id, signed).content == b"only this path"

    def refused(
        query: dict[str, str],
        sandbox_id: str = sbx.sandbox_id,
        method: str = "GET",
        content: bytes | None = None,
    ) -> None:
        answer = _files(domain_server, sandbox_id, query, method=method, content=content)
        assert answer.status_code == 401, (query, answer.status_code, answer.text)
        assert b"never through" not in answer.content

    # expired (signed correctly, with an expiration that passed)
    past = get_signature("secret.txt", "read", None, _token(sbx), -5)
    expired = {
        "path": "secret.txt",
        "signature": past["signature"],
        "signature_expiration": str(past["expiration"]),
    }
    refused(expired)
    # in envd's words, which E2B's own SDK tests compare
    said = _files(domain_server, sbx.sandbox_id, expired).json()
    assert said["message"] == "signature is already expired", said
    # its expiration moved later, or dropped
    refused({**signed, "signature_expiration": str(int(time.time()) + 3600)})
    refused({k: v for k, v in signed.items() if k != "signature_expiration"})
    # another path with the same signature (a replay), or the path spelt otherwise
    refused({**signed, "path": "other.txt"})
    refused({**signed, "path": "/home/user/secret.txt"})
    # another operation: a read signature does not write, a write signature does not read
    refused(signed, method="POST", content=b"overwritten")
    assert sbx.files.read("secret.txt") == "only this path"
    write = _query(sbx.upload_url("secret.txt", use_signature_expiration=120))
    refused(write)
    # another user than the one signed for
    refused({**signed, "username": "user"})
    # the signature altered, or none at all
    refused({**signed, "signature": signed["signature"][:-2] + "AA"})
    refused({"path": "secret.txt"})
    # another sandbox's signature for this sandbox, and this one's for another sandbox
    theirs = get_signature("secret.txt", "read", None, _token(other), 120)
    refused(
        {
            "path": "secret.txt",
            "signature": theirs["signature"],
            "signature_expiration": str(theirs["expiration"]),
        }
    )
    refused(signed, sandbox_id=other.sandbox_id)
    # a signature made with a token the server never issued (the SDK's scheme, a guessed key)
    forged = get_signature("secret.txt", "read", None, "not-a-token", 120)
    refused(
        {
            "path": "secret.txt",
            "signature": forged["signature"],
            "signature_expiration": str(forged["expiration"]),
        }
    )


def test_a_signed_upload_writes_its_one_path(domain_server: Server, pair: list[Sandbox]) -> None:
    """A multipart body names its files' paths; through a signed URL only the signed one is
    written."""
    sbx, _ = pair
    upload = sbx.upload_url("one.txt", use_signature_expiration=120)
    answer = httpx.post(
        upload,
        headers={"E2b-Sandbox-Id": sbx.sandbox_id},
        files=[
            ("file", ("one.txt", b"the signed one")),
            ("file", ("/home/user/.bashrc", b"echo owned")),
        ],
        timeout=30,
    )
    assert answer.status_code == 403
    assert sbx.files.read("one.txt") == "the signed one"
    assert "owned" not in sbx.files.read(".bashrc")
    # and a signed URL is for envd's /files alone: its query on another route opens nothing
    query = urlsplit(upload).query
    listed = httpx.post(
        f"{domain_server.url}/e2b/filesystem.Filesystem/ListDir?{query}",
        headers={"E2b-Sandbox-Id": sbx.sandbox_id, "Content-Type": "application/json"},
        json={"path": "/home/user"},
        timeout=30,
    )
    assert listed.status_code == 401


def test_a_signed_url_as_the_sdk_makes_it_in_path_mode_needs_nothing_else(
    domain_server: Server, pair: list[Sandbox]
) -> None:
    # With E2B_SANDBOX_URL the SDK's URL is `<it>/files?...`: no host and no header name the
    # sandbox. Its signature does, and only for that sandbox, path and operation.
    sbx, other = pair
    other.files.write("mine.txt", "the other sandbox's")
    upload = sbx.upload_url("plain/up.txt", use_signature_expiration=120)
    assert urlsplit(upload).path == "/files"
    written = httpx.post(upload, files={"file": ("up.txt", b"by the URL alone")}, timeout=30)
    assert written.status_code == 200, written.text
    assert sbx.files.read("plain/up.txt") == "by the URL alone"
    download = sbx.download_url("plain/up.txt", use_signature_expiration=120)
    assert httpx.get(download, timeout=30).content == b"by the URL alone"
    # The same signature for another path, another operation or a changed one opens nothing.
    query = _query(download)
    for changed in (
        {**query, "path": "/home/user/mine.txt"},
        {**query, "signature": query["signature"][:-2] + "AA"},
    ):
        answer = httpx.get(f"{domain_server.url}/files?{urlencode(changed)}", timeout=30)
        assert answer.status_code == 401, answer.text
    assert httpx.post(download, content=b"x", timeout=30).status_code == 401
