"""The `insien` command: `serve`, `image build`, `key new`, `tenants check`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio
from pydantic import ValidationError
from rich.console import Console

from . import __version__
from .config import Settings
from .runtime.docker.images import DockerClient, ImageBuildError, build_image, connect_client
from .tenancy.tenants import hash_key, load_tenants_file, new_key


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return Settings(**overrides)


def _docker() -> DockerClient:
    try:
        return connect_client()
    except ImageBuildError as exc:
        raise SystemExit(f"insien: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> None:
    from .server import serve

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.no_build:
        client = _docker()
        try:
            build_image(client, tag=settings.agent_image)
        except ImageBuildError as exc:
            raise SystemExit(f"insien: cannot build {settings.agent_image}: {exc}") from None
        finally:
            client.close()
    trio.run(serve, settings)


def cmd_image_build(args: argparse.Namespace) -> None:
    tag = args.tag or Settings().agent_image
    client = _docker()
    try:
        build_image(client, tag=tag, base=args.base, force=args.force, console=Console())
    except ImageBuildError as exc:
        raise SystemExit(f"insien: image build failed: {exc}") from None
    finally:
        client.close()


def cmd_key_new(args: argparse.Namespace) -> None:
    key = new_key()
    print(f"key (give it to the tenant; it is not stored anywhere): {key}")
    print("for the tenants file:")
    print(f'  {{ id = "{args.id}", sha256 = "{hash_key(key)}" }}')


def cmd_tenants_check(args: argparse.Namespace) -> None:
    try:
        parsed = load_tenants_file(args.path)
    except ValueError as exc:
        raise SystemExit(f"insien: {exc}") from None
    for tenant_id, entry in parsed.tenants.items():
        live = sum(not key.revoked for key in entry.keys)
        print(f"{tenant_id}: {live} key(s) in use, {len(entry.keys) - live} revoked")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="insien", description="Self-hosted code sandboxes.")
    top.add_argument("--version", action="version", version=f"insien {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the REST + WebSocket service")
    serve.add_argument("--host", help="address to listen on (INSIEN_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (INSIEN_PORT / PORT)")
    serve.add_argument(
        "--no-build", action="store_true", help="fail instead of building a missing image"
    )
    serve.set_defaults(func=cmd_serve)

    image = commands.add_parser("image", help="sandbox images")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser("build", help="build the default sandbox image")
    build.add_argument("--tag", help="image name to build (default: INSIEN_AGENT_IMAGE)")
    build.add_argument("--base", help="base image (default: debian:bookworm-slim or a bootstrap)")
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.set_defaults(func=cmd_image_build)

    key = commands.add_parser("key", help="API keys for the tenants file")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    new = key_commands.add_parser("new", help="make a key and print its tenants-file entry")
    new.add_argument("--id", default="key-1", help="the key's name in the tenants file")
    new.set_defaults(func=cmd_key_new)

    tenants = commands.add_parser("tenants", help="the tenants file")
    tenants_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    check = tenants_commands.add_parser("check", help="validate a tenants file")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_tenants_check)
    return top


def describe(exc: ValidationError) -> str:
    """Every problem on one line: the variable (as the environment spells it) and why."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        name = where if where.isupper() else f"INSIEN_{where.upper()}"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ValidationError as exc:
        print(f"insien: invalid configuration: {describe(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
