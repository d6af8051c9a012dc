"""Who may see a preview: the credentials a request for a sandbox's port carries, weighed by
the gateway (sandboxes/access.py, `Surface.PORT`), and Insien's own preview credentials kept
out of what the app is sent.

A caller brings the owner's `X-API-Key`, E2B's traffic token (`e2b-traffic-access-token`), or
a preview token for this port (`POST /sandboxes/<id>/ports/<port>/url`) given as
`?insien_token=` or in the cookie the first such request set (scoped to the port's path, so a
browser can follow the app's links); a sandbox with public traffic needs none. The proxying
itself is preview.py's (HTTP) and preview_ws.py's (WebSockets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..operations.logs import tenant_id
from ..protocol import ErrorCode
from ..sandboxes.access import Admission, Credentials, Gate, StillPaused, Surface, Unauthenticated
from .errors import ApiError

TOKEN_PARAM = "insien_token"
"""The query parameter a preview link carries its token in."""
COOKIE = "insien_port"
"""The cookie a preview token is kept in after its link was followed."""


@dataclass(frozen=True)
class PreviewAccess:
    """A caller admitted to a sandbox's port, and the cookie to set on the answer (a preview
    token that came in the query, kept for the app's next requests), if any."""

    admission: Admission
    cookie: str | None


def admit(
    gate: Gate,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    sandbox_id: str,
    port: int,
    prefix: str,
) -> PreviewAccess:
    """The caller's access to `port` of the sandbox, or ApiError (400 for a port out of range,
    401 with the gateway's reason). A token in the query is tried before the cookie's, so a
    new link replaces an old cookie; `prefix` is where the port is mounted (the cookie's
    path)."""
    if not 1 <= port <= 65535:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "a port is 1 to 65535")
    given = query.get(TOKEN_PARAM)
    kept = cookie_value(headers, COOKIE)
    refusal = Unauthenticated("a key, a traffic token or a preview token is required")
    candidates: list[str | None] = [t for t in (given, kept) if t]
    for token in candidates or [None]:
        credentials = Credentials(
            key=headers.get("x-api-key"),
            traffic_token=headers.get("e2b-traffic-access-token"),
            preview_token=token,
        )
        try:
            admission = gate.admit(sandbox_id, credentials, Surface.PORT, port=port)
        except Unauthenticated as refused:
            refusal = refused
            continue
        if admission.tenant is not None:
            tenant_id.set(admission.tenant.id)
        new = given if admission.preview_token is not None and token == given else None
        return PreviewAccess(admission, _cookie_for(new, prefix))
    raise ApiError(401, ErrorCode.UNAUTHORIZED, str(refusal))


async def awake(gate: Gate, admission: Admission) -> None:
    """A paused sandbox's port answers only once it runs again (Gate.awaken), else 502 at
    once instead of a tunnel its frozen agent never opens."""
    try:
        await gate.awaken(admission)
    except StillPaused as exc:
        raise ApiError(502, ErrorCode.UNAVAILABLE, str(exc)) from None


def _cookie_for(token: str | None, prefix: str) -> str | None:
    if token is None:
        return None
    return f"{COOKIE}={token}; Path={prefix}/; HttpOnly; SameSite=Lax"


def cookie_value(headers: Mapping[str, str], name: str) -> str | None:
    """The value of cookie `name` in a request's `Cookie` header, if it is there."""
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def without_preview_cookie(cookies: bytes) -> bytes | None:
    """A `Cookie` header for the app: the client's cookies less Insien's preview cookie (None
    when nothing is left to send)."""
    kept = [c for c in cookies.split(b";") if not c.strip().startswith(COOKIE.encode() + b"=")]
    return b";".join(kept).strip() if kept else None


def without_token(query: Mapping[str, str]) -> dict[str, str]:
    """A request's query for the app: the preview token is Insien's."""
    return {key: value for key, value in query.items() if key != TOKEN_PARAM}
