"""A native attach to a container's stdio over the Docker socket, as a trio stream.

docker-py's `attach_socket` reads the HTTP upgrade response through a buffered file object and
can swallow stream bytes that arrive in the same packet (docker/docker-py#2466). Here h11 parses
the response and hands back exactly the bytes that followed it, so nothing is lost.
"""

from __future__ import annotations

from urllib.parse import quote

import h11
import trio

READ_SIZE = 256 * 1024


class AttachError(Exception):
    """The Docker Engine refused or broke the attach handshake."""


class AttachedStream(trio.abc.Stream):
    """A container's stdin for writing and its multiplexed stdout/stderr for reading.

    `receive_some` first returns any bytes that arrived with the upgrade response.
    """

    def __init__(self, stream: trio.abc.Stream, leftover: bytes) -> None:
        self._stream = stream
        self._leftover = leftover

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._leftover:
            await trio.lowlevel.checkpoint()
            data, self._leftover = self._leftover, b""
            return data
        return bytes(await self._stream.receive_some(max_bytes or READ_SIZE))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def attach(socket_path: str, container_id: str) -> AttachedStream:
    """Attach to stdin, stdout and stderr; works before `start` and on a running container."""
    stream = await trio.open_unix_socket(socket_path)
    try:
        return await _handshake(stream, container_id)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _handshake(stream: trio.abc.Stream, container_id: str) -> AttachedStream:
    conn = h11.Connection(our_role=h11.CLIENT)
    target = f"/containers/{quote(container_id, safe='')}/attach?stream=1&stdin=1&stdout=1&stderr=1"
    request = h11.Request(
        method="POST",
        target=target,
        headers=[
            ("Host", "docker"),
            ("Connection", "Upgrade"),
            ("Upgrade", "tcp"),
            ("Content-Length", "0"),
        ],
    )
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                raise AttachError("Docker closed the connection during the attach handshake")
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            continue
        if event is h11.PAUSED and conn.their_state is h11.SWITCHED_PROTOCOL:
            leftover, _closed = conn.trailing_data
            return AttachedStream(stream, bytes(leftover))
        if isinstance(event, h11.Response):
            body = await _read_body(conn, stream)
            raise AttachError(
                f"attach to {container_id} failed with HTTP {event.status_code}: {body!r}"
            )
        raise AttachError(f"unexpected event during attach handshake: {event!r}")


async def _read_body(conn: h11.Connection, stream: trio.abc.Stream) -> str:
    parts: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(READ_SIZE))
            conn.receive_data(data)
            if not data:
                break
        elif isinstance(event, h11.Data):
            parts.append(bytes(event.data))
        else:
            break
    return b"".join(parts).decode(errors="replace").strip()
