"""The agent's egress proxy on its own: what it makes of a proxy request's head, and its
answers over a real socket when no server listens or the server refuses (the whole path, with
real clients, is tests/e2e/test_egress.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from insien_agent.proxy import BadHead, parse_head
from tests.agent_process import run_agent


def test_connect_names_host_and_port() -> None:
    target = parse_head(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
    assert (target.host, target.port, target.connect, target.first) == (
        "example.org",
        443,
        True,
        b"",
    )
    v6 = parse_head(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n")
    assert (v6.host, v6.port) == ("2001:db8::1", 8443)


def test_plain_http_is_rewritten_for_the_origin() -> None:
    head = (
        b"GET http://example.org:8080/a/b?c=d HTTP/1.1\r\nHost: example.org:8080\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n"
        b"Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    )
    target = parse_head(head)
    assert (target.host, target.port, target.connect) == ("example.org", 8080, False)
    assert target.first == (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.org:8080\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )
    bare = parse_head(b"GET http://example.org HTTP/1.0\r\n\r\n")
    assert bare.port == 80
    assert bare.first.startswith(b"GET / HTTP/1.0\r\nHost: example.org\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"GET https://example.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT example.org HTTP/1.1\r\n\r\n",
        b"CONNECT example.org:99999 HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET http://example.org:x/ HTTP/1.1\r\n\r\n",
    ],
)
def test_heads_it_cannot_forward(head: bytes) -> None:
    with pytest.raises(BadHead):
        parse_head(head)


def ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


async def test_refusals_reach_the_client(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        await agent.send({"id": 1, "type": "egressListen"})
        listening = await agent.receive()
        assert listening["type"] == "egressListening"
        port = listening["port"]
        bad = await trio.to_thread.run_sync(ask, port, b"GET /nope HTTP/1.1\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")
        answers: list[bytes] = []

        async def asking() -> None:
            request = b"CONNECT db.internal:5432 HTTP/1.1\r\n\r\n"
            answers.append(await trio.to_thread.run_sync(ask, port, request))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asking)
            event = await agent.receive()
            assert (event["type"], event["host"], event["port"]) == (
                "egressConnect",
                "db.internal",
                5432,
            )
            refuse = {"type": "egressRefuse", "conn": event["conn"], "status": 403}
            await agent.send({"id": 2, **refuse, "message": "no"})
            assert (await agent.receive())["type"] == "egressRefused"
        assert answers[0].startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert answers[0].endswith(b"\r\n\r\nno\n")
        await agent.send(
            {"id": 3, "type": "egressRefuse", "conn": 99, "status": 403, "message": ""}
        )
        assert (await agent.receive())["code"] == "NOT_FOUND"
        await agent.send({"id": 4, "type": "egressOpen", "conn": 1})
        assert (await agent.receive())["code"] == "BAD_REQUEST"  # no channel
        # The server stops listening: connections get 503, commands no proxy variables.
        await agent.send({"id": 5, "type": "cancel", "target": 1})
        replies = [await agent.receive(), await agent.receive()]
        assert {r["type"] for r in replies} == {"cancelResponse", "error"}
        request = b"CONNECT a.example:443 HTTP/1.1\r\n\r\n"
        off = await trio.to_thread.run_sync(ask, port, request)
        assert off.startswith(b"HTTP/1.1 503")
