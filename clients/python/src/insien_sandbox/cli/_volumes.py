"""`insien volume create|list|info|delete|ls|put|get|rm|mkdir`: volumes and their files
without a sandbox, over the async SDK (`AsyncVolume`). Uploads and downloads are checked
against the server's SHA-256, as the SDK does."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from .._volumes import AsyncVolume
from . import _render
from ._app import Target, json_option, run


@click.group(name="volume")
@click.option("--url", envvar="INSIEN_URL", help="The server (default $INSIEN_URL, then :3000).")
@click.option("--api-key", envvar="INSIEN_API_KEY", help="Your key (default $INSIEN_API_KEY).")
@click.pass_context
def volume(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Volumes: storage that outlives sandboxes, and its files without a sandbox."""
    ctx.obj = Target(url, api_key)


def _open(target: Target, name: str) -> AsyncVolume:
    return AsyncVolume(name, api_key=target.api_key, base_url=target.url)


@volume.command()
@click.argument("name")
@click.option("--size", help="Size limit: bytes, or 512m, 2g (default: the server's, 1g).")
@click.pass_obj
def create(target: Target, name: str, size: str | None) -> None:
    """Make a volume (mount it with `insien sandbox create --volume NAME:/data`)."""

    async def work() -> None:
        await AsyncVolume.create(name, size, api_key=target.api_key, base_url=target.url)
        print(name)

    run(work)


@volume.command(name="list")
@json_option
@click.pass_obj
def list_(target: Target, as_json: bool) -> None:
    """Your volumes."""

    async def work() -> None:
        found = await AsyncVolume.list(target.api_key, target.url)
        if as_json:
            _render.as_json(found)
            return
        table = Table(box=None, header_style="bold")
        for column in ("NAME", "SIZE LIMIT", "CREATED"):
            table.add_column(column)
        for one in found:
            table.add_row(one.name, str(one.size_limit), one.created_at)
        _render.out.print(table)

    run(work)


@volume.command()
@click.argument("name")
@json_option
@click.pass_obj
def info(target: Target, name: str, as_json: bool) -> None:
    """Its size limit, the bytes it holds now, and the sandboxes that mount it."""

    async def work() -> None:
        found = await _open(target, name).info()
        if as_json:
            _render.as_json(found)
            return
        print(f"name        {found.name}")
        print(f"size limit  {found.size_limit}")
        print(f"bytes used  {found.bytes_used}")
        print(f"created     {found.created_at}")
        print(f"sandboxes   {' '.join(found.sandboxes)}")

    run(work)


@volume.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Destroy the sandboxes that mount it first.")
@click.pass_obj
def delete(target: Target, name: str, force: bool) -> None:
    """Delete a volume and its files (refused while mounted, unless --force)."""

    async def work() -> None:
        await _open(target, name).delete(force=force)
        print(f"deleted {name}")

    run(work)


@volume.command()
@click.argument("name")
@click.argument("path", default="/")
@json_option
@click.pass_obj
def ls(target: Target, name: str, path: str, as_json: bool) -> None:
    """List a folder of a volume."""

    async def work() -> None:
        found = await _open(target, name).list_files(path)
        if as_json:
            _render.as_json(found)
            return
        for entry in found:
            suffix = "/" if entry.type == "dir" else "@" if entry.type == "symlink" else ""
            print(f"{entry.size:>12}  {entry.name}{suffix}")

    run(work)


@volume.command()
@click.argument("name")
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("path")
@click.pass_obj
def put(target: Target, name: str, local: Path, path: str) -> None:
    """Upload a local file to PATH in the volume; prints its size and SHA-256 (checked)."""

    async def work() -> None:
        written = await _open(target, name).upload(path, local)
        print(f"{written.bytes} {written.sha256} {written.path}")

    run(work)


@volume.command()
@click.argument("name")
@click.argument("path")
@click.argument("local", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.pass_obj
def get(target: Target, name: str, path: str, local: Path) -> None:
    """Download PATH of the volume to a local file (`-`: stdout); checked by SHA-256."""

    async def work() -> None:
        handle = _open(target, name)
        if str(local) == "-":
            sys.stdout.buffer.write(await handle.read(path))
            sys.stdout.buffer.flush()
        else:
            await handle.download(path, local)

    run(work)


@volume.command()
@click.argument("name")
@click.argument("path")
@click.pass_obj
def rm(target: Target, name: str, path: str) -> None:
    """Remove a file, or a folder with everything in it, from a volume."""

    async def work() -> None:
        await _open(target, name).remove(path)

    run(work)


@volume.command()
@click.argument("name")
@click.argument("path")
@click.pass_obj
def mkdir(target: Target, name: str, path: str) -> None:
    """Make a folder (and those on the way) in a volume."""

    async def work() -> None:
        await _open(target, name).make_dir(path)

    run(work)
