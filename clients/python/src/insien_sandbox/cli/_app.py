"""`insien sandbox create|list|info|exec|shell|cp|logs|forward|kill`, over the async SDK
(`insien volume …` is in _volumes.py, `insien secret …` in _secrets.py).

Every command talks to a server (`--url`, `--api-key`, or INSIEN_URL and INSIEN_API_KEY),
prints tables for people and `--json` for scripts, and turns the SDK's typed errors into one
line on stderr and exit code 1. `exec` exits with the command's own code.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import anyio
import click

from .._async import AsyncSandbox
from .._errors import InsienError, NotFoundError
from .._secrets import SecretBinding
from .._volumes import VolumeMount
from . import _render
from ._shell import run_shell
from ._transfer import copy, plan_copy

T = TypeVar("T")

QUIET_SECONDS = 0.3
"""`logs` without `--follow` stops once a process's output has been quiet this long (caught up)."""


@dataclass(frozen=True)
class Target:
    """Which server the commands talk to (None: the SDK's environment defaults)."""

    url: str | None
    api_key: str | None

    def open(self, sandbox_id: str) -> AsyncSandbox:
        return AsyncSandbox.connect(sandbox_id, api_key=self.api_key, base_url=self.url)


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine; an SDK error is one line on stderr and exit code 1."""
    try:
        return anyio.run(work)
    except InsienError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def fail(message: str, code: int = 1) -> NoReturn:
    _render.failure(message)
    sys.exit(code)


def pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    """`KEY=VALUE` options as a dict."""
    found: dict[str, str] = {}
    for value in values:
        key, equals, rest = value.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=what)
        found[key] = rest
    return found


def mounts(values: tuple[str, ...]) -> list[VolumeMount]:
    """`--volume NAME:PATH[:ro]` options as mounts."""
    found = []
    for value in values:
        name, colon, rest = value.partition(":")
        path, _, mode = rest.partition(":")
        if not colon or not name or not path or mode not in ("", "ro", "rw"):
            raise click.BadParameter(f"{value!r} is not NAME:PATH[:ro]", param_hint="--volume")
        found.append(VolumeMount(name, path, read_only=mode == "ro"))
    return found


def bindings(values: tuple[str, ...]) -> list[SecretBinding]:
    """`--secret NAME=HOST[,HOST...][=HEADER]` options as bindings (the header a template
    with `{secret}`, e.g. `Authorization: Bearer {secret}`; it may itself hold `=`)."""
    found = []
    for value in values:
        name, equals, rest = value.partition("=")
        hosts, _, header = rest.partition("=")
        listed = [host.strip() for host in hosts.split(",") if host.strip()]
        if not equals or not name or not listed:
            raise click.BadParameter(
                f"{value!r} is not NAME=HOST[,HOST...][=HEADER]", param_hint="--secret"
            )
        found.append(SecretBinding(name, tuple(listed), header=header or None))
    return found


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(name="sandbox")
@click.option("--url", envvar="INSIEN_URL", help="The server (default $INSIEN_URL, then :3000).")
@click.option("--api-key", envvar="INSIEN_API_KEY", help="Your key (default $INSIEN_API_KEY).")
@click.pass_context
def sandbox(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Create, inspect, enter and end sandboxes on an Insien server."""
    ctx.obj = Target(url, api_key)


@sandbox.command()
@click.option("--template", help="Image or template (default: the server's).")
@click.option("--timeout", type=float, help="Lifetime in seconds.")
@click.option("--idle-timeout", type=float, help="Seconds it may go unused.")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="A label (repeat).")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", help="A variable (repeat).")
@click.option("--cpu", type=float, help="CPUs, e.g. 0.5.")
@click.option("--memory", help="Memory, e.g. 512m.")
@click.option(
    "--volume", "-v", multiple=True, metavar="NAME:PATH[:ro]", help="Mount a volume (repeat)."
)
@click.option(
    "--allow-out", multiple=True, metavar="RULE", help="Where it may connect out (repeat)."
)
@click.option(
    "--secret",
    "secret_specs",
    multiple=True,
    metavar="NAME=HOST[,HOST][=HEADER]",
    help="Have the egress proxy add your secret NAME to requests for HOST, as HEADER (e.g. "
    "'Authorization: Bearer {secret}') and wherever $INSIEN_SECRET_NAME's placeholder is "
    "sent; its hosts are added to --allow-out (repeat).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the new sandbox's id.")
@json_option
@click.pass_obj
def create(
    target: Target,
    template: str | None,
    timeout: float | None,
    idle_timeout: float | None,
    metadata: tuple[str, ...],
    env: tuple[str, ...],
    cpu: float | None,
    memory: str | None,
    volume: tuple[str, ...],
    allow_out: tuple[str, ...],
    secret_specs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Create a sandbox; it runs until its timeout or `insien sandbox kill`."""
    volumes = mounts(volume)
    secrets = bindings(secret_specs)
    ways_out = list(allow_out)
    for binding in secrets:
        ways_out += [host for host in binding.hosts if host not in ways_out]
    resources: dict[str, float | int | str] = {}
    if cpu is not None:
        resources["cpu"] = cpu
    if memory is not None:
        resources["memory"] = memory

    async def work() -> None:
        box = AsyncSandbox(
            api_key=target.api_key,
            base_url=target.url,
            template=template,
            timeout=timeout,
            idle_timeout=idle_timeout,
            metadata=pairs(metadata, "--metadata") or None,
            env=pairs(env, "--env") or None,
            resources=resources or None,
            volumes=volumes or None,
            allow_out=ways_out or None,
            secrets=secrets or None,
        )
        async with box:
            box.keep()
            await box.create()
            info = await box.info()
        if quiet:
            print(info.sandbox_id)
        elif as_json:
            _render.as_json(info)
        else:
            _render.sandbox_details(info)

    run(work)


@sandbox.command(name="list")
@click.option(
    "--state", type=click.Choice(["creating", "running", "paused", "ended"]), help="Only these."
)
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Filter (repeat).")
@json_option
@click.pass_obj
def list_(target: Target, state: str | None, metadata: tuple[str, ...], as_json: bool) -> None:
    """Your sandboxes (recently ended ones too)."""

    async def work() -> None:
        found = await AsyncSandbox.list(
            target.api_key, target.url, state=state, metadata=pairs(metadata, "--metadata")
        )
        if as_json:
            _render.as_json(found)
        else:
            _render.sandboxes_table(found)

    run(work)


@sandbox.command()
@click.argument("sandbox_id")
@json_option
@click.pass_obj
def info(target: Target, sandbox_id: str, as_json: bool) -> None:
    """State, lifetime, resources and metadata of one sandbox."""

    async def work() -> None:
        async with target.open(sandbox_id) as box:
            found = await box.info()
        if as_json:
            _render.as_json(found)
        else:
            _render.sandbox_details(found)

    run(work)


@sandbox.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", help="Working folder in the sandbox.")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", help="A variable (repeat).")
@click.option("--timeout", type=float, help="Seconds before the command is killed (exit 124).")
@click.option("--stdin", "-i", "with_stdin", is_flag=True, help="Send this terminal's stdin.")
@click.option(
    "--detach", "-d", is_flag=True, help="Start it in the background; print its pid (see logs)."
)
@click.pass_obj
def exec_(
    target: Target,
    sandbox_id: str,
    command: tuple[str, ...],
    cwd: str | None,
    env: tuple[str, ...],
    timeout: float | None,
    with_stdin: bool,
    detach: bool,
) -> None:
    """Run COMMAND in the sandbox, its output streamed here; exits with its exit code.

    One argument is a shell command line (`exec ID 'ls | wc -l'`); more run directly, without
    a shell (`exec ID -- ls -la /tmp`: after `--`, options are the command's own)."""
    stdin = sys.stdin.buffer.read().decode("utf-8", "replace") if with_stdin else None

    def write(stream: Any) -> Callable[[str], None]:
        def to(data: str) -> None:
            stream.write(data)
            stream.flush()

        return to

    async def work() -> int:
        async with target.open(sandbox_id) as box:
            if detach:
                handle = await box.commands.run(
                    command[0],
                    list(command[1:]) if len(command) > 1 else None,
                    background=True,
                    cwd=cwd,
                    env=pairs(env, "--env") or None,
                    stdin=stdin,
                    timeout=timeout,
                )
                await handle.disconnect()
                print(handle.pid)
                return 0
            result = await box.commands.run(
                command[0],
                list(command[1:]) if len(command) > 1 else None,
                cwd=cwd,
                env=pairs(env, "--env") or None,
                stdin=stdin,
                timeout=timeout,
                on_stdout=write(sys.stdout),
                on_stderr=write(sys.stderr),
            )
        if result.timed_out:
            return 124  # as timeout(1)
        if result.signal is not None and result.exit_code < 0:
            number = getattr(signal, result.signal, None)
            return 128 + int(number) if number is not None else 1
        return result.exit_code

    sys.exit(run(work))


@sandbox.command()
@click.argument("sandbox_id")
@click.option("--cmd", default="/bin/bash", show_default=True, help="The program to run.")
@click.pass_obj
def shell(target: Target, sandbox_id: str, cmd: str) -> None:
    """An interactive terminal in the sandbox (Ctrl-C goes to the sandbox; `exit` leaves)."""
    if not sys.stdin.isatty():
        fail("shell needs a terminal (use `exec` for scripts)", 2)

    async def work() -> int:
        async with target.open(sandbox_id) as box:
            return await run_shell(box, cmd)

    sys.exit(run(work))


@sandbox.command()
@click.argument("source")
@click.argument("destination")
@click.pass_obj
def cp(target: Target, source: str, destination: str) -> None:
    """Copy a file into or out of a sandbox: `cp ./data.csv ID:data.csv`, `cp ID:out.png .`.

    A progress bar shows on a terminal for big files."""

    try:
        plan = plan_copy(source, destination)
    except InsienError as exc:
        fail(str(exc))

    async def work() -> None:
        await copy(target.open, plan)

    run(work)


@sandbox.command()
@click.argument("sandbox_id")
@click.argument("pid", type=int, required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep following until the process exits.")
@click.pass_obj
def logs(target: Target, sandbox_id: str, pid: int | None, follow: bool) -> None:
    """Without PID, the sandbox agent's log; with PID, that process's output (its buffered
    output first, then, with --follow, what it prints until it exits)."""

    async def work() -> None:
        async with target.open(sandbox_id) as box:
            if pid is None:
                for line in await box.logs():
                    print(f"{line.timestamp} {line.line}")
                return
            activity = [anyio.Event()]

            def to(stream: Any) -> Callable[[str], None]:
                def write(data: str) -> None:
                    stream.write(data)
                    stream.flush()
                    activity[0].set()

                return write

            handle = await box.commands.connect(
                pid, on_stdout=to(sys.stdout), on_stderr=to(sys.stderr)
            )
            if follow:
                await handle.wait()
                return
            while not handle.exited:  # caught up once the output goes quiet
                with anyio.move_on_after(QUIET_SECONDS) as quiet:
                    await activity[0].wait()
                if quiet.cancelled_caught:
                    break
                activity[0] = anyio.Event()
            if not handle.exited:
                await handle.disconnect()

    run(work)


@sandbox.command()
@click.argument("sandbox_id")
@click.argument("ports", metavar="[LOCAL:]PORT")
@click.option("--address", default="127.0.0.1", show_default=True, help="Local address.")
@click.pass_obj
def forward(target: Target, sandbox_id: str, ports: str, address: str) -> None:
    """Forward a local port to a port a program in the sandbox listens on (like kubectl
    port-forward); runs until Ctrl-C. `8000` uses the same port here, `0:8000` any free one."""
    local, colon, remote = ports.rpartition(":")
    try:
        remote_port = int(remote)
        local_port = int(local) if colon else remote_port
    except ValueError:
        raise click.BadParameter(f"{ports!r} is not [LOCAL:]PORT", param_hint="PORT") from None

    async def work() -> None:
        async with target.open(sandbox_id) as box:
            await box.info()  # a clear 404 now rather than on the first connection
            forwarding = box.ports.forward(remote_port, local_port=local_port, local_host=address)
            async with forwarding:
                print(f"forwarding {forwarding.url} -> {sandbox_id}:{remote_port}", flush=True)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break

    run(work)


@sandbox.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="SANDBOX_ID...")
@click.pass_obj
def kill(target: Target, sandbox_ids: tuple[str, ...]) -> None:
    """End sandboxes and remove their containers."""

    async def work() -> int:
        failed = 0
        for sandbox_id in sandbox_ids:
            async with target.open(sandbox_id) as box:
                try:
                    await box.info()  # destroy() takes "already gone" for success
                    await box.destroy()
                except NotFoundError:
                    _render.failure(f"no sandbox {sandbox_id}")
                    failed += 1
                    continue
            print(f"killed {sandbox_id}")
        return 1 if failed else 0

    sys.exit(run(work))


@click.group(name="insien-client")
def client() -> None:
    """Insien from the client side: sandboxes, and an MCP server for AI agents."""


def main() -> None:
    """`insien-client`: the same commands as the server's `insien sandbox` and `insien mcp`."""
    from ._mcp_command import mcp
    from ._secrets import secret
    from ._volumes import volume

    client.add_command(sandbox)
    client.add_command(volume)
    client.add_command(secret)
    client.add_command(mcp)
    client()
