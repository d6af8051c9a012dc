"""What a restarted server may believe about a container: only what it wrote and sealed.

Image labels reach containers (a snapshot carries its source's labels), and container names
can be read by anyone who can list containers, so neither may decide ownership or pool
membership by itself. Every sandbox container gets its `insien.*` labels set explicitly at
create (overriding anything an image carries) and an `insien.seal` label: an HMAC-SHA256, with
a key only the server holds, over those labels. A claimed pooled container's new name carries
a seal over (sandbox id, owner) in the same way, and the notes the server leaves with an agent
carry one over (sandbox id, notes). Recovery refuses any container whose seals do not verify.

The key is `INSIEN_SECRET_KEY`, or a random one kept in `INSIEN_STATE_DIR/server.key` (made on
first start, mode 0600): it must outlive restarts, or nothing can be recovered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..runtime.base import (
    LABEL_CREATED_AT,
    LABEL_IDLE_TIMEOUT,
    LABEL_INSTANCE,
    LABEL_METADATA,
    LABEL_OWNER,
    LABEL_POOL,
    LABEL_SANDBOX_ID,
    LABEL_SEAL,
    LABEL_TEMPLATE,
    LABEL_TIMEOUT,
)

log = logging.getLogger("insien.provenance")

SEALED_LABELS = (
    LABEL_SANDBOX_ID,
    LABEL_OWNER,
    LABEL_INSTANCE,
    LABEL_CREATED_AT,
    LABEL_TEMPLATE,
    LABEL_TIMEOUT,
    LABEL_IDLE_TIMEOUT,
    LABEL_METADATA,
    LABEL_POOL,
)
"""Every label recovery reads. Each is set on every create, empty when it does not apply."""

OWNER_MARK = "-owner-"
SEAL_MARK = "-seal-"
KEY_FILE = "server.key"


class ProvenanceError(Exception):
    """A container's labels, name or notes are not what this server sealed."""


def _digest(key: bytes, purpose: str, payload: object) -> str:
    text = json.dumps([purpose, payload], separators=(",", ":"), sort_keys=True)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class Sealer:
    """Seals and verifies what the server writes onto containers and into agents' notes."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the server key must be at least 16 bytes")
        self._key = key

    # -- labels -----------------------------------------------------------------------------

    def seal_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels with every sealed name present (empty if missing) and their seal."""
        sealed = {name: labels.get(name, "") for name in SEALED_LABELS}
        return {**labels, **sealed, LABEL_SEAL: _digest(self._key, "labels", sealed)}

    def verified_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The sealed labels of a container, or ProvenanceError if the seal does not match."""
        sealed = {name: labels.get(name, "") for name in SEALED_LABELS}
        expected = _digest(self._key, "labels", sealed)
        if not hmac.compare_digest(expected, labels.get(LABEL_SEAL, "")):
            raise ProvenanceError("its labels do not carry this server's seal")
        return sealed

    # -- claimed names ------------------------------------------------------------------------

    def claimed_name(self, sandbox_id: str, owner: str) -> str:
        """The container name of a pooled sandbox handed to `owner` (tenant ids fit Docker's
        name alphabet; the seal is hex)."""
        seal = _digest(self._key, "claim", [sandbox_id, owner])[:40]
        return f"insien-{sandbox_id}{OWNER_MARK}{owner}{SEAL_MARK}{seal}"

    def owner_from_name(self, name: str, sandbox_id: str) -> str | None:
        """The owner a claimed container's name carries, None for a sandbox still in the pool;
        ProvenanceError for a name that claims an owner without this server's seal."""
        _, mark, rest = name.lstrip("/").partition(OWNER_MARK)
        if not mark:
            return None
        owner, seal_mark, _ = rest.rpartition(SEAL_MARK)
        if not seal_mark or self.claimed_name(sandbox_id, owner) != name.lstrip("/"):
            raise ProvenanceError("its name claims an owner without this server's seal")
        return owner

    # -- volumes ------------------------------------------------------------------------------

    def volume_seal(self, volume: str, labels: Mapping[str, str]) -> str:
        """The seal over a tenant volume's labels, bound to the runtime's name of it (labels
        copied onto another volume do not verify there)."""
        return _digest(self._key, "volume", [volume, dict(labels)])

    def volume_sealed(self, volume: str, labels: Mapping[str, str], seal: str) -> bool:
        return hmac.compare_digest(self.volume_seal(volume, labels), seal)

    # -- notes --------------------------------------------------------------------------------

    def seal_notes(self, sandbox_id: str, notes: Mapping[str, Any]) -> dict[str, Any]:
        """Notes for an agent to keep, with a seal the server checks when it reads them back."""
        body = {k: v for k, v in notes.items() if k != "seal"}
        return {**body, "seal": _digest(self._key, "notes", [sandbox_id, body])}

    def verified_notes(self, sandbox_id: str, notes: Mapping[str, Any]) -> dict[str, Any]:
        """The notes if their seal matches, else ProvenanceError (the agent is not trusted)."""
        body = {k: v for k, v in notes.items() if k != "seal"}
        expected = _digest(self._key, "notes", [sandbox_id, body])
        seal = notes.get("seal")
        if not isinstance(seal, str) or not hmac.compare_digest(expected, seal):
            raise ProvenanceError("its notes do not carry this server's seal")
        return body


def load_key(secret: str | None, state_dir: Path) -> bytes:
    """The server's sealing key: the configured secret, or the one kept in the state folder."""
    if secret:
        return hashlib.sha256(b"insien-seal\0" + secret.encode()).digest()
    path = state_dir / KEY_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = secrets.token_hex(32)
        # O_EXCL: two servers starting at once agree on the first key written.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            text = path.read_text().strip()
        else:
            with os.fdopen(fd, "w") as out:
                out.write(text + "\n")
            log.info("made a new server key in %s", path)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path} does not hold a hex key") from None
    if len(key) < 16:
        raise ValueError(f"{path} holds a key shorter than 16 bytes")
    return key
