"""The Docker Engine as a `Runtime`: docker-py for lifecycle (`runtime`), a native h11 attach
(`attach`) and Docker's frame headers (`frames`)."""

from __future__ import annotations

from .runtime import DockerRuntime as DockerRuntime

__all__ = ["DockerRuntime"]
