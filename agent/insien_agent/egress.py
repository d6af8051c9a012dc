"""`egressListen`, `egressOpen`, `egressRefuse`: the server's side of the egress proxy
(proxy.py). `egressOpen` carries a waiting connection over the agent link like a tunnel
(tunnel.py); `egressRefuse` answers it with an HTTP error saying why."""

from __future__ import annotations

from typing import Any

from .context import Request
from .errors import BAD_REQUEST, AgentError
from .fields import required_int
from .proxy import answer
from .tunnel import carry

Message = dict[str, Any]


async def handle_egress_listen(req: Request) -> Message:
    """Enable the proxy for this server: `egressListening` with its port, then a stream of
    `egressConnect` events, until cancelled or replaced. `env` (secrets' placeholders) and
    `ca` (the server's egress CA, PEM) are what commands get besides the proxy variables."""

    async def sink(event: Message) -> None:
        await req.outbox.send({"id": req.id, **event})

    env, ca = req.msg.get("env"), req.msg.get("ca")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
    ):
        raise AgentError(BAD_REQUEST, "field 'env' must map names to strings")
    if ca is not None and not isinstance(ca, str):
        raise AgentError(BAD_REQUEST, "field 'ca' must be a PEM string")
    req.egress.configure(env or {}, ca)
    replaced = await req.egress.listen(sink)
    try:
        await req.outbox.send({"id": req.id, "type": "egressListening", "port": req.egress.port})
        await replaced.wait()
        return {"type": "egressListenEnded", "reason": "replaced"}
    finally:
        req.egress.stop_listening(sink)


async def handle_egress_open(req: Request) -> Message:
    """Carry a waiting connection to the server, which connected it to where it asked."""
    if req.channel is None:
        raise AgentError(BAD_REQUEST, "egressOpen needs a channel")
    conn = required_int(req.msg, "conn", minimum=1)
    waiting = req.egress.take(conn)
    try:
        first = waiting.target.first
        if waiting.target.connect:
            waiting.writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await waiting.writer.drain()
        return await carry(req, waiting.reader, waiting.writer, {"conn": conn}, first)
    finally:
        waiting.writer.close()
        waiting.done.set()


async def handle_egress_refuse(req: Request) -> Message:
    """Answer a waiting connection with the server's refusal (403 with the rule, 502...)."""
    conn = required_int(req.msg, "conn", minimum=1)
    status = required_int(req.msg, "status", minimum=400)
    if status > 599:
        raise AgentError(BAD_REQUEST, "field 'status' must be 400-599")
    message = req.msg.get("message")
    if not isinstance(message, str):
        raise AgentError(BAD_REQUEST, "field 'message' must be a string")
    waiting = req.egress.take(conn)
    try:
        await answer(waiting.writer, status, message[:4096])
    finally:
        waiting.done.set()
    return {"type": "egressRefused", "conn": conn}
