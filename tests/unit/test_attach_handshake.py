"""The attach handshake keeps the bytes that arrive in the same read as the 101 response.

docker-py loses them (docker/docker-py#2466); here a peer sends the upgrade response and the
first frame in one write, and the stream must hand that frame back intact.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from insien.runtime.docker.attach import AttachError, _handshake

UPGRADE = (
    b"HTTP/1.1 101 UPGRADED\r\n"
    b"Content-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)
FIRST_FRAME = struct.pack(">BxxxI", 1, 17) + b'{"type":"ready"}\n'


async def fake_docker(server: trio.abc.Stream, response: bytes) -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        request += await server.receive_some(4096)
    await server.send_all(response)
    return request


async def test_bytes_after_the_upgrade_are_not_lost() -> None:
    client, server = trio.testing.memory_stream_pair()
    requests: list[bytes] = []

    async def serve() -> None:
        requests.append(await fake_docker(server, UPGRADE + FIRST_FRAME))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        stream = await _handshake(client, "abc123")
    assert await stream.receive_some() == FIRST_FRAME
    head = requests[0].decode()
    assert head.startswith("POST /containers/abc123/attach?stream=1&stdin=1&stdout=1&stderr=1 ")
    assert "upgrade: tcp" in head.lower()


async def test_refusal_is_an_attach_error() -> None:
    client, server = trio.testing.memory_stream_pair()
    body = b'{"message":"No such container: nope"}'
    response = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def serve() -> None:
        await fake_docker(server, response)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(AttachError, match=r"404.*No such container"):
            await _handshake(client, "nope")
