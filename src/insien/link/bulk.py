"""The server's end of a sandbox's bulk socket (docs/protocol.md, "The bulk socket").

A second path for binary frames that does not pass through the container runtime: a Unix
socket the agent listens on in a host directory bind-mounted into the container. The server
connects, presents a random token, and names that token to the agent on stdio (`bulkAttach`);
from then on the agent writes its frames here (numbered in the one sequence it numbers its
lines in, which the link merges), and the server sends the data frames of its uploads here.
Everything read here is as hostile as the agent's stdout: frames only, each bounded.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import AsyncIterator

import trio

from .frames import HEADER, MARK, MAX_FRAME, Frame, FrameKind, FramingError

MAGIC = b"insien-bulk-1\n"
"""What a connection starts with, before its token (the agent's bulk.MAGIC)."""
TOKEN_BYTES = 16
CONNECT_TIMEOUT = 5.0
SOCKET_BUFFER = 4 * 1024 * 1024
"""Kernel buffer asked for on the server's side: a few frames in flight without a wake-up
each (the host's root may exceed net.core.[rw]mem_max; anyone else gets what it allows)."""


def _widen(sock: trio.socket.SocketType) -> None:
    for force, plain in (
        (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
        (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class BulkConnection:
    """One connection to the agent's bulk socket: frames out (uploads' data) and in."""

    def __init__(self, stream: trio.SocketStream, token: bytes) -> None:
        self._stream = stream
        self.token = token
        self.send_lock = trio.Lock()
        """Held from a frame's first byte to its `write` line being queued on stdio: the agent
        matches them by order (docs/protocol.md)."""

    @classmethod
    async def open(cls, path: str) -> BulkConnection:
        """Connect and present a fresh token; OSError or trio.TooSlowError if it cannot."""
        token = secrets.token_bytes(TOKEN_BYTES)
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_unix_socket(path)
            try:
                _widen(stream.socket)
                await stream.send_all(MAGIC + token)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return cls(stream, token)

    async def send_frame(self, channel: int, data: bytes) -> None:
        """A data frame for the agent (seq 0: the server numbers nothing it sends). The header
        and the payload go as they are, never joined into a copy."""
        if len(data) > MAX_FRAME:
            raise ValueError(f"a frame holds at most {MAX_FRAME} bytes, not {len(data)}")
        await self._stream.send_all(HEADER.pack(MARK, 0, channel, FrameKind.DATA, len(data)))
        if data:
            await self._stream.send_all(data)

    async def frames(self) -> AsyncIterator[Frame]:
        """The agent's frames until it closes the connection. A frame longer than MAX_FRAME,
        of an unknown kind, or anything that is not a frame raises FramingError."""
        while head := await self._exactly(HEADER.size):
            mark, seq, channel, kind, length = HEADER.unpack(head)
            if mark != MARK:
                raise FramingError("the bulk socket carried something that is not a frame")
            if length > MAX_FRAME:
                raise FramingError(f"a frame of {length} bytes, over the {MAX_FRAME} byte limit")
            try:
                frame_kind = FrameKind(kind)
            except ValueError:
                raise FramingError(f"a frame of unknown kind {kind}") from None
            yield Frame(seq, channel, frame_kind, await self._exactly(length, mid_frame=True))

    async def _exactly(self, size: int, *, mid_frame: bool = False) -> bytes:
        """The next `size` bytes, never reading past them (so a payload that is all in the
        socket's buffer arrives as one piece and is used as it is; otherwise its pieces are
        joined once). b"" at the end of the stream between frames."""
        pieces: list[bytes] = []
        have = 0
        while have < size:
            data = await self._stream.receive_some(size - have)
            if not data:
                if have or mid_frame:
                    raise trio.BrokenResourceError("the bulk socket closed mid-frame")
                return b""
            pieces.append(data)
            have += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)
