"""The egress proxy's listener: ways out of a sandbox that has no network interface.

When the server enables egress (`egressListen`), the agent listens on a loopback port as an
HTTP proxy, and user commands started from then on get `HTTP_PROXY` and friends pointing at
it. Each connection's request head names where it wants to go (`CONNECT host:port`, or an
absolute `http://` URI); the agent tells the server (`egressConnect` on the listen request)
and the server decides (its answers are handled in egress.py). The agent decides nothing and
connects nowhere itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import NOT_FOUND, AgentError

Message = dict[str, Any]
Sink = Callable[[Message], Awaitable[None]]
PROXY_HOST = "127.0.0.1"
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT = 30.0
DECISION_TIMEOUT = 30.0
MAX_WAITING = 128
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te")
REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}
REASONS |= {504: "Gateway Timeout"}

log = logging.getLogger("insien_agent.egress")

TRUST_FOLDER = "/etc/insien"
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",
)
CA_VARIABLES = (
    *("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
    *("PIP_CERT", "GIT_SSL_CAINFO"),
)
SECRET_VARIABLE = re.compile(r"INSIEN_SECRET_[A-Z0-9_]{1,64}")
PLACEHOLDER = re.compile(r"insien-secret-[0-9a-f]{32}")


def write_trust(ca_pem: str, folder: str = TRUST_FOLDER) -> tuple[str, str]:
    """The server's egress CA alone, and a bundle of the system's CAs plus it, as files only
    root may change (issue 30): what commands are pointed at to trust the proxy's TLS."""
    os.makedirs(folder, mode=0o755, exist_ok=True)
    system = b""
    for path in SYSTEM_BUNDLES:
        with contextlib.suppress(OSError):
            with open(path, "rb") as found:
                system = found.read()
            break
    ca = ca_pem.encode()
    written = []
    for name, content in (("egress-ca.pem", ca), ("ca-bundle.pem", system.rstrip() + b"\n" + ca)):
        path = os.path.join(folder, name)
        temporary = path + ".tmp"
        with open(temporary, "wb") as out:
            out.write(content)
        os.chmod(temporary, 0o444)
        os.replace(temporary, path)
        written.append(path)
    return written[0], written[1]


class BadHead(Exception):
    """A request head this proxy cannot forward (the message goes back in a 400)."""


@dataclass
class Target:
    host: str
    port: int
    connect: bool
    first: bytes = b""
    """For plain HTTP: the request head rewritten to origin form, sent before the rest."""


@dataclass
class Waiting:
    """A client connection waiting for the server's decision, then owned by whoever took it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    target: Target
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _split_authority(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadHead(f"CONNECT needs host:port, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise BadHead(f"CONNECT needs host:port, not {text!r}")
    return host, int(port)


def parse_head(head: bytes) -> Target:
    """Where a proxy request wants to go; plain HTTP's head rewritten for the origin server
    (origin-form, hop-by-hop headers dropped, `Connection: close`: one request per
    connection, since the next one may name another host)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadHead("not an HTTP/1.x request line")
    method, target, version = parts
    if method.upper() == "CONNECT":
        host, port = _split_authority(target)
        return Target(host, port, connect=True)
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.hostname:
        raise BadHead("this proxy takes CONNECT (for https) and absolute http:// URLs")
    try:
        port = url.port or 80
    except ValueError:
        raise BadHead(f"bad port in {target!r}") from None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = [
        line
        for line in lines[1:]
        if line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP
    ]
    if not any(line.lower().startswith("host:") for line in headers):
        headers.insert(0, f"Host: {url.netloc.rpartition('@')[2]}")
    first = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
    return Target(url.hostname, port, connect=False, first=first.encode("latin-1"))


async def answer(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    """An HTTP error to the client, then close: how every refusal reaches curl or pip."""
    body = (text.rstrip() + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Insien-Egress: refused\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        writer.write(head.encode() + body)
        await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class EgressProxy:
    """The agent's one proxy listener and the connections waiting for a decision."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sink: Sink | None = None
        self._replaced: asyncio.Event | None = None
        self._waiting: dict[int, Waiting] = {}
        self._next = 0
        self._extra: dict[str, str] = {}

    def environment(self) -> dict[str, str]:
        """Proxy variables for a user command: set only while a server takes connections
        (and the secrets' placeholders and the CA bundle's variables it asked for)."""
        if self._sink is None or not self.port:
            return {}
        url = f"http://{PROXY_HOST}:{self.port}"
        local = "localhost,127.0.0.1,::1"
        env = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": local}
        return {**env, **{name.lower(): value for name, value in env.items()}, **self._extra}

    def configure(self, placeholders: dict[str, str], ca_pem: str | None) -> None:
        """What commands get besides the proxy: placeholders (never a secret: the server
        keeps those) and, with a CA, variables pointing at a bundle that trusts it."""
        extra = {
            name: value
            for name, value in placeholders.items()
            if SECRET_VARIABLE.fullmatch(name) and PLACEHOLDER.fullmatch(value)
        }
        if ca_pem:
            try:
                alone, bundle = write_trust(ca_pem)
            except OSError as exc:
                log.warning("could not write the egress CA bundle: %s", exc)
            else:
                extra.update(dict.fromkeys(CA_VARIABLES, bundle))
                extra["NODE_EXTRA_CA_CERTS"] = alone
        self._extra = extra

    async def listen(self, sink: Sink) -> asyncio.Event:
        """Start (once) and send connections to `sink`; the event is set when another listen
        replaces this one (a restarted server listens anew)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._client, PROXY_HOST, 0, limit=HEAD_LIMIT)
            self.port = self._server.sockets[0].getsockname()[1]
        if self._replaced is not None:
            self._replaced.set()
        self._sink = sink
        self._replaced = asyncio.Event()
        return self._replaced

    def stop_listening(self, sink: Sink) -> None:
        """The listen request ended: connections get 503 until the next listen."""
        if self._sink is sink:
            self._sink = None

    def take(self, conn: int) -> Waiting:
        waiting = self._waiting.pop(conn, None)
        if waiting is None:
            raise AgentError(NOT_FOUND, f"no proxy connection {conn} is waiting")
        waiting.taken.set()
        return waiting

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        except asyncio.TimeoutError:  # noqa: UP041 (older Pythons in sandbox images)
            await answer(writer, 408, "no request head came")
            return
        try:
            target = parse_head(head)
        except BadHead as exc:
            await answer(writer, 400, str(exc))
            return
        sink = self._sink
        if sink is None:
            await answer(writer, 503, "egress is not enabled for this sandbox")
            return
        if len(self._waiting) >= MAX_WAITING:
            await answer(writer, 503, "too many proxy connections are waiting")
            return
        self._next += 1
        conn = self._next
        waiting = Waiting(reader, writer, target)
        self._waiting[conn] = waiting
        try:
            event = {"type": "egressConnect", "conn": conn, "host": target.host}
            await sink(
                {**event, "port": target.port, "method": "CONNECT" if target.connect else "HTTP"}
            )
            await asyncio.wait_for(waiting.taken.wait(), DECISION_TIMEOUT)
        except asyncio.TimeoutError:  # noqa: UP041
            if self._waiting.pop(conn, None) is not None:
                await answer(writer, 504, "the server made no decision in time")
            return
        except Exception:
            self._waiting.pop(conn, None)
            log.exception("proxy connection %d failed", conn)
            await answer(writer, 502, "the agent could not pass the connection on")
            return
        await waiting.done.wait()  # whoever took it closes it
