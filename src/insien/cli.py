"""The `insien` command: `serve`, `image build`, `key new`, `tenants check`, and, from the
SDK's CLI, `sandbox …` and `mcp` (installed with `insien-sandbox[cli,mcp]`)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__

# The server's modules load inside the commands that need them: `insien sandbox …` is a client
# and should start as fast as one.
if TYPE_CHECKING:
    from pydantic import ValidationError

    from .config import Settings
    from .tooling.images import DockerClient

CLIENT_COMMANDS = {
    "sandbox": "create, inspect, enter and end sandboxes on a server",
    "volume": "volumes on a server, and their files without a sandbox",
    "secret": "secrets a server's egress proxy adds on the way out",
    "mcp": "an MCP server whose tools make and use sandboxes",
}


def _docker() -> DockerClient:
    from .runtime.docker.engine import Refuse, decide, survey
    from .tooling.images import ImageBuildError, connect_client

    try:
        return connect_client()
    except ImageBuildError as exc:
        # One line saying what to install or start, where that can be told.
        plan = decide(survey(), allow_private=False)
        raise SystemExit(f"insien: {plan.message if isinstance(plan, Refuse) else exc}") from None


class Insien(click.Group):
    """The top-level group; `sandbox` and `mcp` come from the SDK's CLI when it is installed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *CLIENT_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in CLIENT_COMMANDS:
            return super().get_command(ctx, cmd_name)
        try:
            from insien_sandbox import cli as client_cli
        except ImportError:
            return _missing_client(cmd_name)
        command: click.Command = getattr(client_cli, cmd_name)
        return command


def _missing_client(name: str) -> click.Command:
    @click.command(
        name=name, help=CLIENT_COMMANDS[name], context_settings={"ignore_unknown_options": True}
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            f"`insien {name}` needs the SDK's CLI: pip install './clients/python[cli,mcp]'"
        )

    return missing


@click.group(cls=Insien, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insien", message="%(prog)s %(version)s")
def main() -> None:
    """Self-hosted code sandboxes."""


@main.command()
@click.option("--host", help="Address to listen on (INSIEN_HOST).")
@click.option("--port", type=int, help="Port to listen on (INSIEN_PORT / PORT).")
@click.option("--no-build", is_flag=True, help="Fail instead of building a missing image.")
@click.option(
    "--private-dockerd/--no-private-dockerd",
    default=True,
    show_default=True,
    help="When no Docker Engine answers and dockerd is installed, start a private one (as "
    "root) for as long as the service runs.",
)
def serve(host: str | None, port: int | None, no_build: bool, private_dockerd: bool) -> None:
    """Run the REST + WebSocket service."""
    import trio

    from .config import Settings
    from .operations.logs import configure_logging
    from .runtime.docker.engine import EngineUnavailable, engine_for_serve
    from .server import serve as run_server
    from .tooling.images import ImageBuildError, build_image

    overrides: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = _load(lambda: Settings(**overrides))
    configure_logging(settings.log_level, settings.log_format)
    needs_docker = settings.runtime_backend == "docker" or not no_build
    engine: AbstractContextManager[None] = (
        engine_for_serve(private_dockerd, lambda line: print(f"insien: {line}", file=sys.stderr))
        if needs_docker
        else nullcontext()
    )
    try:
        with engine:
            if not no_build:
                client = _docker()
                try:
                    build_image(client, tag=settings.agent_image)
                except ImageBuildError as exc:
                    raise SystemExit(
                        f"insien: cannot build {settings.agent_image}: {exc}"
                    ) from None
                finally:
                    client.close()
            trio.run(run_server, settings)
    except EngineUnavailable as exc:
        raise SystemExit(f"insien: {exc}") from None
    except KeyboardInterrupt:
        sys.exit(130)


@main.group()
def image() -> None:
    """Sandbox images."""


@image.command()
@click.option("--tag", help="Image name to build (default: INSIEN_AGENT_IMAGE).")
@click.option("--base", help="Base image (default: debian:bookworm-slim or a bootstrap).")
@click.option("--force", is_flag=True, help="Rebuild even when current.")
@click.option(
    "--interpreter",
    is_flag=True,
    help="Build the code interpreter's image (INSIEN_INTERPRETER_IMAGE) on the default one.",
)
def build(tag: str | None, base: str | None, force: bool, interpreter: bool) -> None:
    """Build the default sandbox image (or, with --interpreter, the code interpreter's)."""
    from rich.console import Console

    from .config import Settings
    from .tooling.images import ImageBuildError, build_image, build_interpreter_image

    settings = _load(Settings)
    client = _docker()
    try:
        if interpreter:
            build_interpreter_image(
                client,
                tag=tag or settings.interpreter_image,
                default_tag=settings.agent_image,
                force=force,
                console=Console(),
            )
        else:
            build_image(
                client, tag=tag or settings.agent_image, base=base, force=force, console=Console()
            )
    except ImageBuildError as exc:
        raise SystemExit(f"insien: image build failed: {exc}") from None
    finally:
        client.close()


@main.group()
def key() -> None:
    """API keys for the tenants file."""


@key.command()
@click.option("--id", "key_id", default="key-1", show_default=True, help="The key's name.")
def new(key_id: str) -> None:
    """Make a key and print its tenants-file entry."""
    from .tenancy.tenants import hash_key, new_key

    made = new_key()
    print(f"key (give it to the tenant; it is not stored anywhere): {made}")
    print("for the tenants file:")
    print(f'  {{ id = "{key_id}", sha256 = "{hash_key(made)}" }}')


@main.group()
def tenants() -> None:
    """The tenants file."""


@tenants.command()
@click.argument("path", type=click.Path(path_type=Path))
def check(path: Path) -> None:
    """Validate a tenants file."""
    from .tenancy.tenants import load_tenants_file

    try:
        parsed = load_tenants_file(path)
    except ValueError as exc:
        raise SystemExit(f"insien: {exc}") from None
    for tenant_id, entry in parsed.tenants.items():
        live = sum(not k.revoked for k in entry.keys)
        print(f"{tenant_id}: {live} key(s) in use, {len(entry.keys) - live} revoked")


def _load(make: Any) -> Settings:
    """Settings from the environment; a bad variable is one line and exit code 2."""
    from pydantic import ValidationError

    try:
        settings: Settings = make()
    except ValidationError as exc:
        print(f"insien: invalid configuration: {describe(exc)}", file=sys.stderr)
        sys.exit(2)
    return settings


def describe(exc: ValidationError) -> str:
    """Every problem on one line: the variable (as the environment spells it) and why."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        name = where if where.isupper() else f"INSIEN_{where.upper()}"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)
