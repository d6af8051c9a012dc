"""The egress proxy's injecting path (issue 30): a connection of a sandbox with secret
bindings, read request by request so the server can add the secrets on the way out.

Plain HTTP is read as it comes. For `CONNECT` to a host a binding names, the server ends the
sandbox's TLS itself with a certificate from its egress CA (secrets/ca.py; the sandbox trusts
that CA, never holds its key) and opens its own TLS to the real host, verified against the
system's CAs and INSIEN_EGRESS_CA_FILE: an upstream that fails verification is refused (502),
never trusted. One request per connection: the head sent on says `Connection: close`, and the
answer is relayed until the far end closes (clients open a new connection for the next).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from ..egress.policy import SecretBinding
from ..link import AgentGone
from ..link.tunnel import Tunnel, TunnelRefused
from ..secrets import inject

log = logging.getLogger("insien.egress")

READ_SIZE = 256 * 1024
HANDSHAKE_TIMEOUT = 15.0
HEAD_TIMEOUT = 30.0
GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, TunnelRefused, AgentGone)
REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}


class TunnelStream(trio.abc.HalfCloseableStream):
    """A carried proxy connection as a trio stream (for `trio.SSLStream` and the relay),
    counting its bytes in the sandbox's counters."""

    def __init__(self, tunnel: Tunnel, count: Callable[[int, int], None]) -> None:
        self._tunnel = tunnel
        self._count = count
        self._buffer = b""
        self._ended = False
        self._eof_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("this side was closed")
        await self._tunnel.send(bytes(data))
        self._count(0, len(data))

    async def wait_send_all_might_not_block(self) -> None:
        return

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            await self._tunnel.send(b"", eof=True)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._buffer and not self._ended:
            data = await self._tunnel.receive()
            if data is None:
                self._ended = True
            else:
                self._buffer = data
                self._count(len(data), 0)
        size = max_bytes or len(self._buffer)
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return chunk

    async def aclose(self) -> None:
        """Half-close, and wait until what was sent reached the program (the tunnel lets go
        of unanswered writes when it ends)."""
        with contextlib.suppress(*GONE):
            await self.send_eof()
            await self._tunnel.flush()


class UpstreamFailed(Exception):
    """The real host could not be reached, or its certificate did not verify (a 502)."""


@dataclass
class Injection:
    """What one injecting connection needs from the proxy around it."""

    sandbox_id: str
    host: str
    port: int
    bindings: Sequence[SecretBinding]
    value_of: Callable[[str], str | None]
    used: Callable[[str, str, str], None]
    """Called with (secret, method, path) for each secret a request carries out."""
    refused: Callable[[], None]


def error_answer(status: int, text: str) -> bytes:
    body = (text.rstrip() + "\n").encode()
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Insien-Egress: refused\r\n\r\n"
    ).encode() + body


async def read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """A request head and what came after it; None if the stream ended first or the head
    is longer than HEAD_LIMIT."""
    buffer = b""
    with trio.move_on_after(HEAD_TIMEOUT):
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                return buffer[: end + 4], buffer[end + 4 :]
            if len(buffer) > inject.HEAD_LIMIT:
                return None
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return None
            buffer += data
    return None


async def serve_injecting(
    job: Injection,
    client: trio.abc.Stream,
    open_upstream: Callable[[], Awaitable[trio.abc.Stream]],
) -> None:
    """One request from `client`: refused, or rewritten, sent on and answered."""
    read = await read_head(client)
    if read is None:
        return
    raw, rest = read
    outcome = inject.apply(raw, job.host, job.port, job.bindings, job.value_of)
    if outcome.head is None:
        job.refused()
        log.info(
            "sandbox %s: egress to %s:%d refused (%d): %s",
            job.sandbox_id,
            job.host,
            job.port,
            outcome.status,
            outcome.refusal,
        )
        await client.send_all(error_answer(outcome.status, outcome.refusal))
        return
    head = outcome.head
    body = b""
    length = head.get("Content-Length")
    whole_body = (
        bool(outcome.body_swaps)
        and head.get("Transfer-Encoding") is None
        and length is not None
        and length.isdigit()
        and int(length) <= inject.MAX_BODY
    )
    if whole_body:
        assert length is not None
        body = rest
        while len(body) < int(length):
            data = await client.receive_some(READ_SIZE)
            if not data:
                return
            body += data
        body = body[: int(length)]
        if any(placeholder in body for placeholder in outcome.forbidden):
            job.refused()
            await client.send_all(
                error_answer(403, "the request's body carries another secret's placeholder")
            )
            return
        for placeholder, secret in outcome.body_secrets.items():
            if placeholder in body and secret not in outcome.used:
                outcome.used.append(secret)
        body = inject.swap_body(body, outcome.body_swaps)
        head.remove("Content-Length")
        head.headers.append(("Content-Length", str(len(body))))
        rest = b""
    scanner = inject.Scanner(outcome.forbidden)
    if scanner.feed(rest) is not None:
        job.refused()
        await client.send_all(
            error_answer(403, "the request's body carries another secret's placeholder")
        )
        return
    try:
        upstream = await open_upstream()
    except UpstreamFailed as exc:
        log.info("sandbox %s: egress to %s:%d: %s", job.sandbox_id, job.host, job.port, exc)
        await client.send_all(error_answer(502, str(exc)))
        return
    async with upstream:
        await upstream.send_all(head.render() + body + rest)
        for secret in outcome.used:
            job.used(secret, head.method, outcome.path)
        await relay(job, client, upstream, scanner)


async def relay(
    job: Injection, client: trio.abc.Stream, upstream: trio.abc.Stream, scanner: inject.Scanner
) -> None:
    """The rest of the request out (cut if it carries another secret's placeholder), the
    answer back until the far end closes."""

    async def out(cancel: trio.CancelScope) -> None:
        try:
            while data := await client.receive_some(READ_SIZE):
                secret = scanner.feed(bytes(data))
                if secret is not None:
                    job.refused()
                    log.info(
                        "sandbox %s: egress to %s:%d cut: the body carried the placeholder "
                        "of secret %r",
                        job.sandbox_id,
                        job.host,
                        job.port,
                        secret,
                    )
                    cancel.cancel()
                    return
                await upstream.send_all(data)
        except GONE:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(out, nursery.cancel_scope)
        try:
            while data := await upstream.receive_some(READ_SIZE):
                await client.send_all(data)
        except GONE:
            pass
        nursery.cancel_scope.cancel()


async def tls_upstream(
    stream: trio.SocketStream, host: str, context: ssl.SSLContext
) -> trio.SSLStream[trio.SocketStream]:
    """Real TLS to the host the sandbox named, verified; UpstreamFailed if it does not."""
    name = host[1:-1] if host.startswith("[") else host
    secured = trio.SSLStream(stream, context, server_hostname=name, https_compatible=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await secured.do_handshake()
    except trio.TooSlowError:
        raise UpstreamFailed(f"TLS to {host} timed out") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or "certificate verify failed"
            raise UpstreamFailed(
                f"{host}'s certificate is not trusted ({reason}): refused"
            ) from None
        raise UpstreamFailed(f"TLS to {host} failed: {cause or exc}") from None
    return secured


async def tls_client(
    tunnel_stream: TunnelStream, context: ssl.SSLContext
) -> trio.SSLStream[TunnelStream] | None:
    """The sandbox's TLS, ended with the egress CA's certificate; None if it did not take
    it (a client that does not trust the CA sees a failed handshake, nothing more)."""
    secured = trio.SSLStream(tunnel_stream, context, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await secured.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError):
        return None
    return secured
