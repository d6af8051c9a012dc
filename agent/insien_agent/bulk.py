"""The bulk socket: a second path for binary frames that does not pass through the container
runtime (docs/protocol.md, "The bulk socket").

The server bind-mounts a per-sandbox host directory at BULK_DIR; the agent listens on a Unix
socket in it and the server connects (the agent never dials out). A connection presents a
token first, and counts only once the server names that token on stdio (`bulkAttach`), so
nothing but the server that holds the agent's stdin can attach one. While one is attached,
the agent writes its frames there instead of on stdout (numbered in the same sequence, kept in
the same replay buffer), and the server sends the data frames of `write`s carrying
`"bulk": true` there, in the order of those lines. Lines, ordering and replay stay on stdio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections import deque

from .context import Request
from .errors import BAD_REQUEST, AgentError
from .frames import DATA, HEADER, MAX_FRAME, InFrame
from .identity import Identity

log = logging.getLogger("insien_agent")

BULK_DIR = "/run/insien/bulk"
"""Where the server mounts the sandbox's bulk directory (root-only: mode 0700)."""
SOCKET_NAME = "agent.sock"
MAGIC = b"insien-bulk-1\n"
TOKEN_BYTES = 16
PREFACE_TIMEOUT = 5.0
ATTACH_TIMEOUT = 10.0
MAX_OFFERS = 4
"""Connections that presented a token and wait for their `bulkAttach`; older ones are closed."""
HELD_FRAMES = 8
"""Data frames read from the socket before their `write` line came; the socket is not read
beyond this (back-pressure on the server's sends)."""


class BulkSocket:
    """The listening socket, the attached connection, and the inbound frames it carried."""

    def __init__(self, directory: str = BULK_DIR) -> None:
        self._directory = directory
        self.path: str | None = None
        """The socket's path inside the container, once listening (the hello announces it)."""
        self._server: asyncio.AbstractServer | None = None
        self._offers: dict[bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._offered = asyncio.Condition()
        self.writer: asyncio.StreamWriter | None = None
        """The attached connection's write side, or None: frames then go on stdout."""
        self._reading: asyncio.Task[None] | None = None
        self._held: deque[InFrame] = deque()
        self._claims: deque[tuple[int, asyncio.Future[bytes]]] = deque()
        self._room = asyncio.Event()
        self._room.set()

    async def listen(self, identity: Identity) -> bool:
        """Listen in the mounted directory if there is one and only root (or the server's own
        uid, never the sandbox user's) can enter it; False (stdio only) otherwise."""
        try:
            info = os.lstat(self._directory)
        except OSError:
            return False  # not mounted: Kubernetes, or a server without the second channel
        if not stat.S_ISDIR(info.st_mode):
            log.warning("%s is not a directory: no bulk socket", self._directory)
            return False
        try:
            if identity.uid is not None and info.st_uid == identity.uid:
                os.chown(self._directory, 0, 0)  # the sandbox user must never own it
                info = os.lstat(self._directory)
            os.chmod(self._directory, 0o700)
            path = os.path.join(self._directory, SOCKET_NAME)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by an agent before this one (a sandbox booted again)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
                os.chmod(path, 0o600)
                # The server connects as the directory's owner (root, or its own uid).
                os.chown(path, info.st_uid, info.st_gid)
                self._server = await asyncio.start_unix_server(
                    self._offer, sock=listener, limit=MAX_FRAME + HEADER.size
                )
            except BaseException:
                listener.close()
                raise
        except OSError as exc:
            log.warning("no bulk socket in %s: %s", self._directory, exc)
            return False
        self.path = path
        return True

    async def _offer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection: keep it, by its token, until a `bulkAttach` names that token."""
        try:
            preface = await asyncio.wait_for(
                reader.readexactly(len(MAGIC) + TOKEN_BYTES), PREFACE_TIMEOUT
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            writer.close()
            return
        if not preface.startswith(MAGIC):
            writer.close()
            return
        while len(self._offers) >= MAX_OFFERS:  # the oldest offer goes
            _, stale = self._offers.pop(next(iter(self._offers)))
            stale.close()
        self._offers[preface[len(MAGIC) :]] = (reader, writer)
        async with self._offered:
            self._offered.notify_all()

    async def handle_attach(self, req: Request) -> dict[str, object]:
        """`bulkAttach`: make the connection that presented `token` the attached one."""
        raw = req.msg.get("token")
        try:
            token = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            token = b""
        if len(token) != TOKEN_BYTES:
            raise AgentError(BAD_REQUEST, f"field 'token' must be {TOKEN_BYTES} bytes in hex")
        if self._server is None:
            raise AgentError(BAD_REQUEST, "this agent has no bulk socket")

        async def offered() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with self._offered:
                await self._offered.wait_for(lambda: token in self._offers)
                return self._offers.pop(token)

        try:
            reader, writer = await asyncio.wait_for(offered(), ATTACH_TIMEOUT)
        except TimeoutError:
            raise AgentError(BAD_REQUEST, "no connection presented that token") from None
        self.detach("another connection was attached")
        self.writer = writer
        self._reading = asyncio.create_task(self._read(reader, writer))
        log.info("bulk socket attached")
        return {"type": "bulkAttachResponse"}

    def close(self) -> None:
        """Stop listening and let every connection go (the agent is ending)."""
        if self._server is not None:
            self._server.close()
        for _, writer in self._offers.values():
            writer.close()
        self._offers.clear()
        self.detach("the agent is ending")

    def detach(self, why: str) -> None:
        """Let the attached connection go: frames go on stdout again, and `write`s still waiting
        for a frame from it fail (their frames never came)."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        log.info("bulk socket detached: %s", why)
        writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        self._held.clear()
        self._room.set()
        while self._claims:
            channel, waiter = self._claims.popleft()
            if not waiter.done():
                waiter.set_exception(_no_frame(channel))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Data frames from the server, held until their `write` claims them."""
        why = "the server closed it"
        try:
            while True:
                await self._room.wait()
                head = await reader.readexactly(HEADER.size)
                mark, _, channel, kind, size = HEADER.unpack(head)
                if mark != 0 or kind != DATA or size > MAX_FRAME:
                    why = "the server sent something that is not a data frame"
                    return
                self._held.append(InFrame(channel, kind, await reader.readexactly(size)))
                if len(self._held) >= HELD_FRAMES:
                    self._room.clear()
                self._match()
        except (OSError, asyncio.IncompleteReadError) as exc:
            why = f"{type(exc).__name__}"
        finally:
            if self.writer is writer:
                self.detach(why)

    def claim(self, channel: int) -> asyncio.Future[bytes]:
        """The payload of the data frame for the `write` on `channel`, which the server sent on
        the socket before that line. Claims are made in the order of the lines, and the server
        sends frames in that same order with rising channel numbers: a frame of a lower channel
        ahead of the claimed one belongs to a line that never claimed it (refused before), and
        is dropped; one of a higher channel means this line's frame is not coming."""
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.writer is None:
            waiter.set_exception(_no_frame(channel))
            return waiter
        self._claims.append((channel, waiter))
        self._match()
        return waiter

    def _match(self) -> None:
        while self._claims and self._held:
            channel, waiter = self._claims[0]
            frame = self._held[0]
            if waiter.done():  # its request was cancelled: its frame is left to be dropped
                self._claims.popleft()
            elif frame.channel < channel:
                log.warning("a bulk data frame on channel %d was never claimed", frame.channel)
                self._held.popleft()
            elif frame.channel == channel:
                self._claims.popleft()
                self._held.popleft()
                waiter.set_result(frame.data)
            else:
                self._claims.popleft()
                waiter.set_exception(_no_frame(channel))
        if len(self._held) < HELD_FRAMES:
            self._room.set()


def _no_frame(channel: int) -> AgentError:
    return AgentError(BAD_REQUEST, f"no data frame came for channel {channel}")
