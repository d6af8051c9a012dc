"""A refused WebSocket handshake followed by more bytes on the same connection used to end the
whole server (hypercorn 0.18 let one connection's protocol error escape; `_hypercorn.py`).
Now it ends that connection only, and the server goes on serving everyone else."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import start_server, stop_server

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def health(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return (await client.get("/health")).status_code


def test_a_refused_handshake_then_more_bytes_does_not_end_the_server() -> None:
    process, server = start_server(suffix="abuse")
    host, port = server.url.removeprefix("http://").split(":")

    async def abuse() -> None:
        for path, extra in (
            ("/agent/nope", "\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"),  # next request
            ("/agent/nope", "Content-Length: 5\r\n\r\nhello"),  # a body with the handshake
            ("/sandbox/nope/ports/80/tcp", "\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        ):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all((HANDSHAKE.format(path=path) + extra).encode())
                with trio.move_on_after(3):
                    while await stream.receive_some(65536):
                        pass
            assert await health(server.url) == 200

    try:
        trio.run(abuse)
    finally:
        assert stop_server(process) == 0
