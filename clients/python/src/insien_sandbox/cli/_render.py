"""How the CLI shows things: rich tables for people, JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from .._types import SandboxInfo

err = Console(stderr=True, highlight=False)
# Piped into a script, a table is not cut to 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 4096)


def as_json(value: Any) -> None:
    """One JSON document on stdout: dataclasses become objects with the wire's camelCase."""
    print(json.dumps(_plain(value), indent=2, sort_keys=True))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_camel(k): _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def sandboxes_table(found: Sequence[SandboxInfo]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "TEMPLATE", "CREATED", "EXPIRES", "CLIENTS", "METADATA"):
        table.add_column(column)
    for info in found:
        table.add_row(
            info.sandbox_id,
            info.state if info.end_reason is None else f"{info.state} ({info.end_reason})",
            info.template,
            info.created_at,
            info.expires_at if info.state != "ended" else "",
            str(info.clients),
            " ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())),
        )
    out.print(table)


def sandbox_details(info: SandboxInfo) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _plain(info).items():
        shown = (
            " ".join(f"{k}={v}" for k, v in sorted(value.items()))
            if isinstance(value, dict)
            else value
        )
        table.add_row(name, "" if shown is None else str(shown))
    out.print(table)


def failure(message: str) -> None:
    err.print(f"[red]insien:[/red] {message}", markup=True, soft_wrap=True)


def is_terminal() -> bool:
    return sys.stderr.isatty()
