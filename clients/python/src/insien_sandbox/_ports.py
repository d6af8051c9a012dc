"""`sandbox.ports`: reach TCP ports that programs inside the sandbox listen on.

`forward(port)` opens a listener on this machine; each connection to it becomes a WebSocket to
`/sandbox/<id>/ports/<port>/tcp`, whose binary messages carry the connection's bytes (the
server and the sandbox's agent do the rest; the sandbox needs no network).
"""

from __future__ import annotations

from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import httpx
import wsproto.events
from anyio.abc import SocketAttribute, SocketStream
from httpx_ws import WebSocketDisconnect, WebSocketNetworkError, WebSocketUpgradeError

from ._session import REST_TIMEOUT, ws_base, ws_session

if TYPE_CHECKING:
    from ._session import Session

READ_SIZE = 256 * 1024


class Forward:
    """A local listener forwarding to a port in the sandbox; use it with `async with`."""

    def __init__(self, session: Session, port: int, local_host: str, local_port: int) -> None:
        self._session = session
        self.port = port
        self.local_host = local_host
        self.local_port = local_port
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        """`http://host:port` of the local end (for a web server in the sandbox)."""
        return f"http://{self.local_host}:{self.local_port}"

    async def open(self) -> Forward:
        """Start listening (`local_port` is then the port chosen, if it was 0)."""
        sandbox_id = await self._session.create()
        target = f"{ws_base(self._session.base_url)}/sandbox/{sandbox_id}/ports/{self.port}/tcp"
        listener = await anyio.create_tcp_listener(
            local_host=self.local_host, local_port=self.local_port
        )
        self.local_port = int(listener.extra(SocketAttribute.local_port))
        scope = self._scope = anyio.CancelScope()
        # Its own HTTP client: every forwarded connection is a WebSocket of its own, which
        # must not wait for (or take) the sandbox's REST and RPC connections' pool.
        client = httpx.AsyncClient(timeout=REST_TIMEOUT, limits=httpx.Limits(max_connections=None))

        async def serve() -> None:
            try:
                with scope:
                    async with client, listener:
                        await listener.serve(lambda stream: self._bridge(client, stream, target))
            finally:
                self._stopped.set()

        self._session.tasks().start_soon(serve)
        return self

    async def _bridge(self, client: httpx.AsyncClient, local: SocketStream, target: str) -> None:
        async with local:
            try:
                opening = ws_session(client, target, self._session.api_key)
                async with opening as ws, anyio.create_task_group() as both:

                    async def outwards() -> None:
                        # The local client stopping sending (or half-closing) ends nothing:
                        # the answer may still be on its way.
                        with suppress(anyio.EndOfStream):
                            while True:
                                await ws.send_bytes(await local.receive(READ_SIZE))

                    async def inwards() -> None:
                        with suppress(WebSocketDisconnect, WebSocketNetworkError):
                            while True:
                                event = await ws.receive()
                                if isinstance(event, wsproto.events.BytesMessage):
                                    await local.send(bytes(event.data))
                        both.cancel_scope.cancel()  # the program closed the connection

                    both.start_soon(outwards)
                    both.start_soon(inwards)
            except WebSocketUpgradeError:
                return  # nothing listens there (502): close the local connection at once
            except Exception:
                # One connection failing (either side gone) closes that connection only,
                # never the listener or the sandbox's other work.
                return

    async def close(self) -> None:
        """Stop listening; connections in progress end too."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()

    async def __aenter__(self) -> Forward:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Ports:
    """Ports programs in the sandbox listen on (on 127.0.0.1 or 0.0.0.0)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def url(self, port: int, *, expires: float = 3600) -> str:
        """A preview URL for `port`: HTTP to it without a key (a browser follows the app's
        links with the cookie the first request sets), for `expires` seconds."""
        sandbox_id = await self._session.create()
        reply = await self._session.request(
            "POST", f"/sandboxes/{sandbox_id}/ports/{port}/url", {"expires": float(expires)}
        )
        return str(reply["url"])

    def forward(self, port: int, *, local_port: int = 0, local_host: str = "127.0.0.1") -> Forward:
        """A listener on `local_host:local_port` (0: any free port) whose every connection
        reaches `port` in the sandbox: `async with sandbox.ports.forward(8000) as f: f.url`."""
        return Forward(self._session, port, local_host, local_port)
