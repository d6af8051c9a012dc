"""Agent limits, read once from the environment the orchestrator gives the container."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

MIB = 1024 * 1024


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class AgentSettings:
    max_line: int = 48 * MIB
    """Longest request or response line; longer requests are answered with TOO_LARGE."""
    max_output: int = 4 * MIB
    """Output kept per stream of one `exec`; the rest is drained and the result flagged."""
    max_read: int = 16 * MIB
    """Largest file a `read` returns in one message."""
    replay_bytes: int = 16 * MIB
    """Messages kept until the orchestrator acknowledges them, for a restarted one to resume."""
    ring_bytes: int = 1 * MIB
    """Output a process keeps for late `attach`; also how far a streaming client may lag."""
    window: int = 8
    """Output events (of up to 256 KiB) a streaming request may have unacknowledged; the
    server grants more as its client takes them."""
    workdir: str = "/home/user"
    """Where relative paths and commands start when the request names no `cwd`."""
    user: str = "1000"
    """Who user code runs as (`uid[:gid]`, a name, or `agent` for the agent itself)."""
    root: bool = False
    """Whether a command may ask to run as root (`"user": "root"`): the server says so only
    where root inside is unprivileged outside (gVisor, remapped user namespaces)."""

    @classmethod
    def from_environ(cls) -> AgentSettings:
        return cls(
            max_line=_int_env("INSIEN_AGENT_MAX_LINE", cls.max_line),
            max_output=_int_env("INSIEN_AGENT_MAX_OUTPUT", cls.max_output),
            max_read=_int_env("INSIEN_AGENT_MAX_READ", cls.max_read),
            ring_bytes=_int_env("INSIEN_AGENT_RING_BYTES", cls.ring_bytes),
            replay_bytes=_int_env("INSIEN_AGENT_REPLAY_BYTES", cls.replay_bytes),
            window=_int_env("INSIEN_AGENT_WINDOW", cls.window),
            workdir=os.environ.get("INSIEN_AGENT_WORKDIR") or os.getcwd(),
            user=os.environ.get("INSIEN_AGENT_USER") or cls.user,
            root=os.environ.get("INSIEN_AGENT_ROOT") == "1",
        )


LOADER_VARIABLES = "INSIEN_AGENT_IMAGE_ENV"
"""The image's own values of the loader's variables (`LD_PRELOAD`, `LD_LIBRARY_PATH`, …), as
JSON: the container has them blank, so that they never load anything into the agent, and
user commands get them back."""


def user_environment() -> dict[str, str]:
    """The environment user commands get: the container's, minus the agent's own settings,
    with the image's loader variables as the image set them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIEN_AGENT_")}
    raw = os.environ.get(LOADER_VARIABLES)
    restored = json.loads(raw) if raw else {}
    if isinstance(restored, dict):
        blank = {k for k, v in env.items() if v == "" and k.startswith(("LD_", "GLIBC_TUNABLES"))}
        env.update({k: v for k, v in restored.items() if k in blank and isinstance(v, str)})
    return env
