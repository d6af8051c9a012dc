"""The public surfaces are deliberate: changing them must change this test too."""

from __future__ import annotations

import subprocess
import sys

import pytest

import insien
import insien_sandbox


def test_sdk_public_names() -> None:
    assert sorted(insien_sandbox.__all__) == [
        "APIError",
        "AsyncCommandHandle",
        "AsyncSandbox",
        "AsyncSecrets",
        "AsyncVolume",
        "AsyncWatchHandle",
        "AuthenticationError",
        "CodeContext",
        "CommandHandle",
        "CommandResult",
        "ConnectError",
        "EntryInfo",
        "Execution",
        "ExecutionError",
        "FilesystemEvent",
        "InsienError",
        "IntegrityError",
        "LogLine",
        "MetricsPoint",
        "NetworkInfo",
        "NetworkPolicy",
        "NotFoundError",
        "NotSupportedError",
        "OutputChunk",
        "ProcessInfo",
        "RPCError",
        "RateLimitError",
        "Result",
        "Sandbox",
        "SandboxClosedError",
        "SandboxInfo",
        "SandboxMetrics",
        "SecretBinding",
        "SecretInfo",
        "Secrets",
        "UnavailableError",
        "Volume",
        "VolumeEntry",
        "VolumeInfo",
        "VolumeMount",
        "WatchHandle",
        "__version__",
    ]
    for name in insien_sandbox.__all__:
        assert hasattr(insien_sandbox, name)


def test_sdk_exception_tree() -> None:
    from insien_sandbox import (
        APIError,
        AuthenticationError,
        ConnectError,
        InsienError,
        NotFoundError,
        NotSupportedError,
        RateLimitError,
        RPCError,
        SandboxClosedError,
        UnavailableError,
    )

    for api in (
        AuthenticationError,
        NotFoundError,
        NotSupportedError,
        RateLimitError,
        UnavailableError,
    ):
        assert issubclass(api, APIError)
    for error in (APIError, ConnectError, RPCError, SandboxClosedError):
        assert issubclass(error, InsienError)


def test_sandbox_methods() -> None:
    seed_and_lifecycle = {
        "create",
        "connect",
        "list",
        "info",
        "set_timeout",
        "keepalive",
        "pause",
        "resume",
        "snapshot",
        "status",
        "destroy",
        "run_command",
        "write_file",
        "get_file",
        "get_file_bytes",
    }
    for cls in (insien_sandbox.Sandbox, insien_sandbox.AsyncSandbox):
        public = {name for name in vars(cls) if not name.startswith("_")}
        assert seed_and_lifecycle <= public, cls


def test_namespaces() -> None:
    commands = {"run", "connect", "list", "kill", "send_stdin"}
    files = {
        "write",
        "read",
        "list",
        "stat",
        "exists",
        "mkdir",
        "remove",
        "rename",
        "upload",
        "download",
    }
    pty = {"create", "resize", "send_input", "kill"}
    handle = {"wait", "kill", "send_stdin", "disconnect"}
    ports = {"url", "forward"}
    network = {"get", "update"}
    secrets = {"create", "list", "rotate", "delete"}
    from insien_sandbox import _commands, _files, _network, _ports, _secrets, _sync

    for cls, names in [
        (_commands.Commands, commands),
        (_sync.Commands, commands),
        (_files.Files, files),
        (_sync.Files, files),
        (_commands.Pty, pty),
        (_sync.Pty, pty),
        (_commands.CommandHandle, handle),
        (_sync.CommandHandle, handle),
        (_ports.Ports, ports),
        (_sync.Ports, ports),
        (_network.Network, network),
        (_sync.Network, network),
        (_secrets.AsyncSecrets, secrets),
        (_secrets.Secrets, secrets),
    ]:
        assert names <= {n for n in vars(cls) if not n.startswith("_")}, cls


def test_server_public_names() -> None:
    assert sorted(insien.__all__) == ["Settings", "__version__", "serve"]


def test_sdk_needs_no_server_dependencies() -> None:
    code = (
        "import sys, insien_sandbox; "
        "bad = {'quart', 'quart_trio', 'hypercorn', 'docker', 'insien', 'trio_websocket'}"
        " & set(sys.modules); "
        "print(sorted(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_errors_leave_async_with_unwrapped() -> None:
    """The SDK's background nursery must not turn a caller's exception into a group."""
    with pytest.raises(KeyError):
        async with insien_sandbox.AsyncSandbox(api_key="k", base_url="http://127.0.0.1:9"):
            raise KeyError("mine")
    with pytest.raises(insien_sandbox.ConnectError):
        async with insien_sandbox.AsyncSandbox(api_key="k", base_url="http://127.0.0.1:9") as box:
            await box.create()  # nothing listens on port 9


def test_one_version_everywhere() -> None:
    """The version is written once (src/insien/__init__.py): the SDK's distribution and the
    agent's zip application carry the same."""
    import io
    import zipfile
    from importlib.metadata import version

    from insien._resources import agent_zipapp

    assert version("insien") == insien.__version__
    assert insien_sandbox.__version__ == insien.__version__
    archive = zipfile.ZipFile(io.BytesIO(agent_zipapp()))
    assert archive.read("insien_agent/_version.py").decode() == (
        f"__version__ = {insien.__version__!r}\n"
    )


def test_the_agent_zip_is_reproducible_and_carries_bytecode() -> None:
    """Same sources, same bytes (the agent volume is named after their digest), and bytecode
    beside every module so a sandbox does not compile the agent at each start."""
    import ast
    import importlib.util
    import io
    import subprocess
    import sys
    import zipfile

    from insien._resources import agent_package_dir, agent_zipapp

    here = agent_zipapp()
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from insien._resources import agent_zipapp as z;"
            " sys.stdout.buffer.write(z())",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert here == elsewhere
    # A busy process holds the agent's names and strings elsewhere too; that must not change
    # a byte (marshal's back-references follow reference counts).
    held: list[str] = []
    for path in agent_package_dir().glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                held.append(sys.intern(node.value))
            elif isinstance(node, ast.Name):
                held.append(sys.intern(node.id))
            elif isinstance(node, ast.Attribute):
                held.append(sys.intern(node.attr))
    assert agent_zipapp() == here
    archive = zipfile.ZipFile(io.BytesIO(here))
    names = set(archive.namelist())
    modules = {n for n in names if n.startswith("insien_agent/") and n.endswith(".py")}
    assert modules
    assert {m + "c" for m in modules} <= names
    pyc = archive.read("insien_agent/dispatch.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, unchecked
