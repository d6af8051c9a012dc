"""`insien secret create|list|rotate|delete`: your secrets on a server, over the async SDK
(`AsyncSecrets`). A value is read from stdin or a file, never from the command line, where
other local users could read it (`ps`, /proc/<pid>/cmdline) and shells keep it in history."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from .._secrets import AsyncSecrets
from . import _render
from ._app import Target, fail, json_option, run


@click.group(name="secret")
@click.option("--url", envvar="INSIEN_URL", help="The server (default $INSIEN_URL, then :3000).")
@click.option("--api-key", envvar="INSIEN_API_KEY", help="Your key (default $INSIEN_API_KEY).")
@click.pass_context
def secret(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Secrets the server's egress proxy adds on the way out: sandboxes never hold them."""
    ctx.obj = Target(url, api_key)


def _secrets(target: Target) -> AsyncSecrets:
    return AsyncSecrets(api_key=target.api_key, base_url=target.url)


def _value(source: Path | None) -> str:
    """The value from a file, or stdin (`-` or no --from-file), its line end dropped; at a
    terminal it is asked for without being shown."""
    if source is None or str(source) == "-":
        if sys.stdin.isatty():
            raw = str(click.prompt("value", hide_input=True, err=True))
        else:
            raw = sys.stdin.read()
    else:
        raw = source.read_text()
    value = raw.removesuffix("\n").removesuffix("\r")
    if not value:
        fail("no value: pipe it in (`... | insien secret create NAME`) or use --from-file")
    return value


value_option = click.option(
    "--from-file",
    "source",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Read the value from this file (default: stdin; never the command line).",
)


@secret.command()
@click.argument("name")
@value_option
@click.option("--description", "-d", default="", help="What it is for (shown by list).")
@json_option
@click.pass_obj
def create(target: Target, name: str, source: Path | None, description: str, as_json: bool) -> None:
    """Keep a secret NAME, its value from stdin or --from-file. Bind it with
    `insien sandbox create --secret 'NAME=HOST=Authorization: Bearer {secret}'`."""
    value = _value(source)

    async def work() -> None:
        made = await _secrets(target).create(name, value, description=description)
        if as_json:
            _render.as_json(made)
        else:
            print(made.name)

    run(work)


@secret.command(name="list")
@json_option
@click.pass_obj
def list_(target: Target, as_json: bool) -> None:
    """Your secrets: names, descriptions, dates and versions (never a value)."""

    async def work() -> None:
        found = await _secrets(target).list()
        if as_json:
            _render.as_json(found)
            return
        table = Table(box=None, header_style="bold")
        for column in ("NAME", "VERSION", "UPDATED", "DESCRIPTION"):
            table.add_column(column)
        for one in found:
            table.add_row(one.name, str(one.version), one.updated_at, one.description)
        _render.out.print(table)

    run(work)


@secret.command()
@click.argument("name")
@value_option
@click.option("--description", "-d", help="A new description (default: keep it).")
@json_option
@click.pass_obj
def rotate(
    target: Target, name: str, source: Path | None, description: str | None, as_json: bool
) -> None:
    """Give NAME a new value (stdin or --from-file): bound sandboxes use it from their next
    request."""
    value = _value(source)

    async def work() -> None:
        info = await _secrets(target).rotate(name, value, description=description)
        if as_json:
            _render.as_json(info)
        else:
            print(f"{info.name} version {info.version}")

    run(work)


@secret.command()
@click.argument("name")
@click.pass_obj
def delete(target: Target, name: str) -> None:
    """Delete NAME: requests that would carry it are refused from now on."""

    async def work() -> None:
        await _secrets(target).delete(name)
        print(f"deleted {name}")

    run(work)
