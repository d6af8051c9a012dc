"""Signed file URLs, E2B's scheme (`upload_url`/`download_url` of its SDKs): a URL that reads or
writes one path of one sandbox, usable without any other credential until it expires.

The SDK signs `path:operation:user:<envdAccessToken>[:expiration]` with SHA-256 and sends
`signature=v1_<base64 without padding>` (and `signature_expiration`, Unix seconds, when it
has one). Only the holder of the sandbox's envd access token can make one; the server knows
which tokens it handed out (`EnvdTokens`) and recomputes the signature with each that is still
valid. The signature covers the path, the operation, the user and the expiration, so changing
any of them, or using it for another sandbox, makes it worthless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "v1_"
SIGNATURE = "signature"
EXPIRATION = "signature_expiration"
TOKENS_PER_SANDBOX = 8
"""A sandbox's newest envd tokens kept (each create and connect hands one out)."""
MAX_SANDBOXES = 4096
"""Sandboxes whose tokens are kept; the least recently given a token are forgotten first."""
OPERATIONS = {"GET": "read", "POST": "write"}


class BadSignature(Exception):
    """A signed request that proves nothing: malformed, expired, or signed for something else."""


def signature(
    path: str, operation: str, user: str, token: str, expiration: int | None = None
) -> str:
    """The signature E2B's SDKs compute (`e2b.sandbox.signature.get_signature`)."""
    raw = f"{path}:{operation}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode()).digest()
    return PREFIX + base64.b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SignedRequest:
    """What a signed `/files` request asks for, as its signature must cover it."""

    path: str
    operation: str
    user: str
    signature: str
    expiration: int | None

    def signed_with(self, token: str) -> bool:
        """Whether `token` made this signature (compared in constant time)."""
        expected = signature(self.path, self.operation, self.user, token, self.expiration)
        return hmac.compare_digest(expected.encode(), self.signature.encode())


def signed_request(method: str, query: Mapping[str, str], now: float) -> SignedRequest | None:
    """The signed request a `/files` query carries; None when it has no signature. Refuses one
    that cannot be valid: another method, no path, an expiration that passed or is no number."""
    given = query.get(SIGNATURE)
    if given is None:
        return None
    operation = OPERATIONS.get(method)
    if operation is None:
        raise BadSignature(f"a signed URL is for GET or POST, not {method}")
    path = query.get("path", "")
    if not path:
        raise BadSignature("a signed URL names its path")
    raw_expiration = query.get(EXPIRATION)
    expiration: int | None = None
    if raw_expiration is not None:
        if not raw_expiration.isdigit() or len(raw_expiration) > 12:
            raise BadSignature("signature_expiration is in Unix seconds")
        expiration = int(raw_expiration)
        if expiration < now:
            raise BadSignature("signature is already expired")  # envd's words
    user = query.get("username", "")
    return SignedRequest(path, operation, user, given, expiration)


class EnvdTokens:
    """The envd access tokens the E2B front handed out, per sandbox: the SDK signs URLs with
    the one it holds, and a signature does not say which. Kept in memory (a restarted server
    forgets them, and URLs signed before it stop working), bounded in both directions."""

    def __init__(self) -> None:
        self._tokens: OrderedDict[str, list[str]] = OrderedDict()

    def record(self, sandbox_id: str, token: str) -> None:
        kept = self._tokens.pop(sandbox_id, [])
        kept = [*kept, token][-TOKENS_PER_SANDBOX:]
        self._tokens[sandbox_id] = kept
        while len(self._tokens) > MAX_SANDBOXES:
            self._tokens.popitem(last=False)

    def of(self, sandbox_id: str) -> list[str]:
        """The sandbox's tokens, newest first (each is still to be checked as a token)."""
        return list(reversed(self._tokens.get(sandbox_id, [])))

    def signer(self, request: SignedRequest) -> str | None:
        """The sandbox whose kept token made this signature, for a URL that names none (the
        SDKs' URLs in path mode carry no sandbox id: its signature is the only trace). At most
        `MAX_SANDBOXES` x `TOKENS_PER_SANDBOX` hashes; the sandboxes given a token last first."""
        for sandbox_id, tokens in reversed(self._tokens.items()):
            if any(request.signed_with(token) for token in reversed(tokens)):
                return sandbox_id
        return None
