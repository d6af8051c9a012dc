"""What the egress proxy does to one request of a sandbox that has secret bindings (issue 30):
pure logic on bytes, run by sandboxes/egress.py on each request head it reads.

For a request to host:port, a binding applies when the host is one of its hosts and the
method and path are among its own. Applying bindings set their headers and swap their
secrets' placeholders for the values, anywhere in the head. A placeholder whose secret no
binding applies to this request is refused (403 naming the binding it belongs to), so a
placeholder is worth nothing anywhere else; so is a binding whose secret was deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..egress.policy import SecretBinding

HEAD_LIMIT = 64 * 1024
MAX_BODY = 1024 * 1024
"""The largest request body placeholders are swapped in (a binding with `body`)."""
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "upgrade")


class BadRequest(ValueError):
    """A head the proxy cannot read (answered 400)."""


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        """The target's path, without the query (what `paths` prefixes are matched against)."""
        return self.target.split("?", 1)[0]

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def remove(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]

    def render(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def parse_head(raw: bytes) -> Head:
    """A request head (up to and with its blank line); BadRequest if it is not HTTP/1.x."""
    text = raw.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("not an HTTP/1.x request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest("a malformed header line")
        headers.append((name, value.strip()))
    return Head(parts[0], parts[1], parts[2], headers)


@dataclass
class Outcome:
    """The head to send on, or the refusal; which secrets were used, and whose placeholders
    the body may carry (swapped if `body_secrets`, else refused if seen)."""

    head: Head | None = None
    path: str = ""
    """The request's path as the sandbox sent it (placeholders, never values): for the audit."""
    refusal: str = ""
    status: int = 403
    used: list[str] = field(default_factory=list)
    body_swaps: dict[bytes, bytes] = field(default_factory=dict)
    """Placeholder -> value, for a body the proxy may rewrite (bounded by MAX_BODY)."""
    body_secrets: dict[bytes, str] = field(default_factory=dict)
    """Placeholder -> its secret's name, for the body's swaps (the audit)."""
    forbidden: dict[bytes, str] = field(default_factory=dict)
    """Placeholders (-> their secret) the body must not carry."""


def apply(
    raw: bytes,
    host: str,
    port: int,
    bindings: Sequence[SecretBinding],
    value_of: Callable[[str], str | None],
) -> Outcome:
    """Rewrite one request head for `host`:`port` with the sandbox's bindings."""
    try:
        head = parse_head(raw)
    except BadRequest as exc:
        return Outcome(refusal=str(exc), status=400)
    target = f"{host}:{port}"
    applying = [
        b
        for b in bindings
        if b.covers_host(host, port) and b.covers_request(head.method, head.path)
    ]
    applying_secrets = {b.secret for b in applying}
    text = raw.decode("utf-8", "surrogateescape")
    outcome = Outcome()
    for binding in bindings:
        if binding.secret in applying_secrets:
            continue
        outcome.forbidden[binding.placeholder.encode()] = binding.secret
        if binding.placeholder in text:
            return Outcome(
                refusal=f"{head.method} {target}{head.path} carries the placeholder of "
                f"secret {binding.secret!r}, which is only for its {binding.describe()}"
            )
    # Needed now: a header's secret, or one whose placeholder the head carries.
    needed = {b.secret for b in applying if b.header is not None or b.placeholder in text}
    path = head.path  # before any swap: a value may go in the path (`/bot<token>/...`)
    values: dict[str, str] = {}
    for secret in sorted(applying_secrets):
        value = value_of(secret)
        if value is not None:
            values[secret] = value
        elif secret in needed:
            return Outcome(
                refusal=f"secret {secret!r} bound for {target} does not exist (deleted, or "
                "never made)"
            )
    for binding in applying:
        name = binding.header_name
        if name is not None:
            head.remove(name)
    for binding in applying:
        name = binding.header_name
        if name is not None:
            head.headers.append((name, binding.header_value(values[binding.secret])))
    for binding in applying:
        value = values.get(binding.secret)
        if value is not None:
            head.target = head.target.replace(binding.placeholder, value)
            head.headers = [(k, v.replace(binding.placeholder, value)) for k, v in head.headers]
    for name in HOP_BY_HOP:
        head.remove(name)
    head.headers.append(("Connection", "close"))  # one request per connection: see egress.py
    outcome.head = head
    outcome.path = path
    outcome.used = sorted(needed)
    for binding in applying:
        if binding.body and binding.secret in values:
            placeholder = binding.placeholder.encode()
            outcome.body_swaps[placeholder] = values[binding.secret].encode()
            outcome.body_secrets[placeholder] = binding.secret
    return outcome


class Scanner:
    """Finds any of some placeholders in a stream of chunks (one may span two chunks)."""

    def __init__(self, needles: dict[bytes, str]) -> None:
        self._needles = needles
        self._keep = max((len(n) for n in needles), default=1) - 1
        self._tail = b""

    def feed(self, chunk: bytes) -> str | None:
        """The secret whose placeholder this chunk completes, if any."""
        if not self._needles:
            return None
        window = self._tail + chunk
        found = next((s for n, s in self._needles.items() if n in window), None)
        self._tail = window[-self._keep :] if self._keep else b""
        return found


def swap_body(body: bytes, swaps: dict[bytes, bytes]) -> bytes:
    for placeholder, value in swaps.items():
        body = body.replace(placeholder, value)
    return body
