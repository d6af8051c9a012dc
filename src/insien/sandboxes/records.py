"""A sandbox's record rebuilt from what outlives the server: its container's labels and host
config, and the notes the server left with its agent (labels cannot change after create)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import Settings
from ..egress import NetworkPolicy
from ..runtime.base import (
    LABEL_CREATED_AT,
    LABEL_IDLE_TIMEOUT,
    LABEL_METADATA,
    LABEL_OWNER,
    LABEL_SANDBOX_ID,
    LABEL_TEMPLATE,
    LABEL_TIMEOUT,
    ContainerInfo,
)
from ..tenancy.resources import Resources
from .provenance import Sealer
from .sandbox import Sandbox, SandboxOptions

log = logging.getLogger("insien.records")


def parse_timestamp(text: str) -> datetime:
    """The inverse of `iso_timestamp`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def record_from(labels: dict[str, str], info: ContainerInfo, settings: Settings) -> dict[str, Any]:
    """A sandbox's record (all but its link) from its verified labels and its limits."""
    created_at = parse_timestamp(labels[LABEL_CREATED_AT])
    timeout = float(labels[LABEL_TIMEOUT])
    idle = labels.get(LABEL_IDLE_TIMEOUT, "")
    metadata = json.loads(labels.get(LABEL_METADATA, "{}"))
    if not isinstance(metadata, dict):
        raise ValueError("metadata label is not an object")
    options = SandboxOptions(
        template=labels[LABEL_TEMPLATE],
        timeout=timeout,
        idle_timeout=float(idle) if idle else None,
        resources=Resources(
            info.cpus or settings.cpus,
            info.memory or settings.memory_limit,
            info.pids or settings.pids_limit,
        ),
        runtime=info.oci_runtime,
        network=info.network or "none",
        metadata={str(k): str(v) for k, v in metadata.items()},
    )
    return {
        "id": labels[LABEL_SANDBOX_ID],
        "owner": labels[LABEL_OWNER],
        "container_id": info.id,
        "created_at": created_at,
        "options": options,
        "expires_at": created_at + timedelta(seconds=timeout),
    }


def claim_notes(sandbox: Sandbox) -> dict[str, Any]:
    """What a claimed pooled container's labels cannot say: this sandbox's own options."""
    options = sandbox.options
    return {
        "createdAt": sandbox.created_at.timestamp(),
        "expiresAt": sandbox.expires_at.timestamp(),
        "timeout": options.timeout,
        "idleTimeout": options.idle_timeout,
        "metadata": options.metadata,
        "onExpiry": options.on_expiry,
        "network": options.network_policy.to_json(),
        "autoResume": options.auto_resume,
        **({"maskRequestHost": options.mask_request_host} if options.mask_request_host else {}),
    }


def apply_notes(sandbox: Sandbox, notes: dict[str, Any]) -> None:
    """What the server told the agent to keep: a claimed sandbox's options, a moved expiry."""
    if isinstance(notes.get("expiresAt"), (int, float)):
        sandbox.expires_at = datetime.fromtimestamp(notes["expiresAt"], UTC)
    if isinstance(notes.get("createdAt"), (int, float)):
        sandbox.created_at = datetime.fromtimestamp(notes["createdAt"], UTC)
    changes: dict[str, Any] = {}
    if isinstance(notes.get("timeout"), (int, float)):
        changes["timeout"] = float(notes["timeout"])
    if "idleTimeout" in notes and isinstance(notes["idleTimeout"], (int, float, type(None))):
        changes["idle_timeout"] = notes["idleTimeout"]
    if notes.get("onExpiry") in ("end", "pause", "stop"):
        changes["on_expiry"] = notes["onExpiry"]
    if isinstance(notes.get("autoResume"), bool):
        changes["auto_resume"] = notes["autoResume"]
    if isinstance(notes.get("maskRequestHost"), str):
        changes["mask_request_host"] = notes["maskRequestHost"]
    if isinstance(notes.get("metadata"), dict):
        changes["metadata"] = {str(k): str(v) for k, v in notes["metadata"].items()}
    if "network" in notes:
        try:
            changes["network_policy"] = NetworkPolicy.from_json(notes["network"])
        except ValueError as exc:  # RuleError too: sealed, so only an older server's rules
            log.error("sandbox %s: its network note is not usable: %s", sandbox.id, exc)
    if changes:
        sandbox.options = replace(sandbox.options, **changes)


def notes_message(sealer: Sealer, sandbox: Sandbox, **notes: Any) -> dict[str, Any]:
    """A `note` for the agent: every note the server relies on, sealed (the agent is not
    trusted, so a restarted server believes only notes it can verify)."""
    sandbox.notes.update(notes)
    return {"type": "note", "notes": sealer.seal_notes(sandbox.id, sandbox.notes)}
