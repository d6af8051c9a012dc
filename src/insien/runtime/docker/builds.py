"""Template builds on the Docker Engine: a Dockerfile and its context through the engine's
builder (its layer cache makes a rebuild of unchanged steps immediate), the output passed on
line by line, a failed step reported with its number."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import docker

from ..base import BuildStepFailed, ImageBuild, RuntimeFailure

STEP_LINE = re.compile(r"^Step (\d+)/\d+ : ")


def build(client: docker.DockerClient, job: ImageBuild, output: Callable[[str], None]) -> str:
    """Run the build to its end (in a worker thread); returns the image id. The engine reports a
    failed step inside the stream, not as an error of the call, so the stream is read whole."""
    stream: Any = client.api.build(
        fileobj=job.context,
        custom_context=True,
        tag=job.tag,
        labels=dict(job.labels),
        buildargs=dict(job.build_args),
        network_mode="default" if job.network else "none",
        container_limits={"memory": job.memory, "memswap": job.memory} if job.memory else None,
        nocache=job.no_cache,
        rm=True,
        forcerm=True,
        pull=False,  # no registry is asked: the base must be here already
        decode=True,
        timeout=int(job.timeout),
    )
    step: int | None = None
    image_id: str | None = None
    for chunk in stream:
        if "error" in chunk:
            message = str(chunk.get("error") or "the build failed").strip()
            raise BuildStepFailed(message, step)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        for line in str(chunk.get("stream", "")).splitlines():
            found = STEP_LINE.match(line)
            if found:
                step = int(found.group(1))
            if line.strip():
                output(line.rstrip())
    if image_id is None:
        raise RuntimeFailure("the Docker Engine ended the build without an image")
    return image_id
