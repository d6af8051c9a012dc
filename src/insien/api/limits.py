"""A deadline on reading request bodies, so a client that stops sending cannot hold a request.

hypercorn closes connections that do not finish a request head within `keep_alive_timeout`,
but its `read_timeout` would also cut a long download whose client has nothing to send. So the
body deadline lives here: each `http.request` event must arrive within `seconds`; a stalled
body reads as a disconnect, which Quart and the upload handler already treat as the end.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, Scope


class BodyDeadline:
    """ASGI middleware: per-chunk deadline while a request body is still arriving."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def guarded() -> ASGIReceiveEvent:
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect
                return await receive()
            with trio.move_on_after(self.seconds):
                event = await receive()
                if event["type"] != "http.request" or not event.get("more_body", False):
                    body_done = True
                return event
            body_done = True
            return {"type": "http.disconnect"}

        await self.app(scope, guarded, send)
