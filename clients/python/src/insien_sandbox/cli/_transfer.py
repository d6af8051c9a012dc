"""`insien sandbox cp`: one file into or out of a sandbox, streamed, with a progress bar."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import anyio
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .._async import AsyncSandbox
from .._errors import InsienError
from . import _render

PROGRESS_FROM = 1024 * 1024
"""Files smaller than this copy without a bar (it would only flicker)."""


def split_remote(spec: str) -> tuple[str, str] | None:
    """`ID:path` -> (ID, path); a local path (no colon before any slash) -> None."""
    head, colon, tail = spec.partition(":")
    if not colon or "/" in head or not head:
        return None
    return head, tail or "."


def _bar(total: int, what: str) -> Progress | None:
    if total < PROGRESS_FROM or not _render.is_terminal():
        return None
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_render.err,
        transient=True,
    )
    progress.add_task(what, total=total)
    return progress


def _updater(progress: Progress | None) -> Callable[[int], None] | None:
    if progress is None:
        return None
    task = progress.task_ids[0]
    return lambda done: progress.update(task, completed=done)


@dataclass(frozen=True)
class Plan:
    """One copy, with what this machine's side of it looks like (checked before any I/O)."""

    sandbox_id: str
    remote: str
    local: Path
    upload: bool
    size: int = 0


def plan_copy(source: str, destination: str) -> Plan:
    remote_source = split_remote(source)
    remote_destination = split_remote(destination)
    if (remote_source is None) == (remote_destination is None):
        raise InsienError("cp copies between this machine and a sandbox: one side is ID:path")
    if remote_destination is not None:
        local = Path(source)
        if not local.is_file():
            raise InsienError(f"{source} is not a file (cp copies one file; tar folders first)")
        return Plan(*remote_destination, local, upload=True, size=local.stat().st_size)
    assert remote_source is not None
    sandbox_id, path = remote_source
    local = Path(destination)
    if local.is_dir():
        local = local / posixpath.basename(path.rstrip("/"))
    return Plan(sandbox_id, path, local, upload=False)


async def copy(open_sandbox: Callable[[str], AsyncSandbox], plan: Plan) -> None:
    async with open_sandbox(plan.sandbox_id) as box:
        path = plan.remote
        if plan.upload:
            if path.endswith("/") or path == "." or await _is_dir(box, path):
                path = posixpath.join(path, plan.local.name)
            progress = _bar(plan.size, f"{plan.local.name} -> {plan.sandbox_id}")
            with progress or nullcontext():
                await box.files.upload(path, plan.local, on_progress=_updater(progress))
            return
        entry = await box.files.stat(path)
        if entry.type == "dir":
            raise InsienError(f"{path} is a folder (cp copies one file; tar folders first)")
        progress = _bar(entry.size, f"{plan.sandbox_id}:{posixpath.basename(path)}")
        partial = plan.local.with_name(f".{plan.local.name}.insien-part")
        try:
            with progress or nullcontext():
                await box.files.download(path, partial, on_progress=_updater(progress))
            await anyio.to_thread.run_sync(os.replace, partial, plan.local)
        finally:
            await anyio.to_thread.run_sync(partial.unlink, True)


async def _is_dir(box: AsyncSandbox, path: str) -> bool:
    return await box.files.exists(path) and (await box.files.stat(path)).type == "dir"
