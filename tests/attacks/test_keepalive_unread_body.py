"""An answer sent before its request body was read (a 401 on a POST) used to leave a kept-alive
connection hanging: Quart's request task, woken by the disconnect hypercorn delivers while it
winds the finished request up, cancelled that wind-up half way (`_hypercorn.py`), so the
connection was neither closed nor made ready for its next request, and the client's next
request on it was never answered. The same cut-short wind-up also skipped restarting the idle
timer, so any kept-alive connection that had served one request was never closed when idle.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server

HEADER_TIMEOUT = 2.0
ANSWER_TIMEOUT = 5.0
REFUSED = "/sandbox/nope/keepalive"  # no key: refused with 401 before the body is read


@pytest.fixture(scope="module")
def keepalive_server() -> Iterator[Server]:
    process, info = start_server({"INSIEN_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}, "keepalive")
    yield info
    assert stop_server(process) == 0, info.log()[-4000:]


def one_connection(server: Server) -> httpx.Client:
    """A client that never has more than one connection open, so reuse is the rule."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.Client(base_url=server.url, limits=limits, timeout=ANSWER_TIMEOUT)


def chunked(body: bytes) -> Iterator[bytes]:
    """The body as an iterator, so httpx sends it with `Transfer-Encoding: chunked`."""
    for start in range(0, len(body), 1000):
        yield body[start : start + 1000]


@pytest.mark.parametrize(
    ("size", "as_chunks"),
    [(20, False), (4096, False), (4096, True), (65536, False)],
    ids=["20B", "4KiB", "4KiB-chunked", "64KiB"],
)
def test_requests_after_an_early_refusal_are_answered(
    keepalive_server: Server, size: int, as_chunks: bool
) -> None:
    body = b'{"timeout":"' + b"a" * (size - 14) + b'"}'
    with one_connection(keepalive_server) as client:
        for _ in range(200):
            content = chunked(body) if as_chunks else body
            refused = client.post(
                REFUSED, content=content, headers={"content-type": "application/json"}
            )
            assert refused.status_code == 401
            assert client.get("/health").status_code == 200


def test_a_body_larger_than_a_socket_buffer_still_gets_its_early_answer(
    keepalive_server: Server,
) -> None:
    body = b"a" * (1024 * 1024)
    with one_connection(keepalive_server) as client:
        for _ in range(10):
            refused = client.post(REFUSED, content=body)
            assert refused.status_code == 401
            assert client.get("/health").status_code == 200


def test_a_connection_idle_after_a_request_is_closed(keepalive_server: Server) -> None:
    host, port = keepalive_server.url.removeprefix("http://").split(":")
    for request in (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /sandbox/nope/keepalive HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            sock.settimeout(HEADER_TIMEOUT + ANSWER_TIMEOUT)
            started = time.monotonic()
            received = b""
            while chunk := sock.recv(65536):  # a timeout here is the failure
                received += chunk
            assert received.startswith(b"HTTP/1.1 ")
            assert time.monotonic() - started < HEADER_TIMEOUT + ANSWER_TIMEOUT
