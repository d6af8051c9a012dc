"""The layers stay apart (issue 10): fronts translate, the core decides, the link carries, the
runtime hosts. Checked on the source's imports, so a shortcut fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "insien"


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def files(*parts: str) -> list[Path]:
    target = SOURCE.joinpath(*parts)
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(SOURCE)} imports {name}"
        for path in paths
        for name in sorted(imports_of(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        # fronts translate: they reach the runtime only through the core (its errors too:
        # sandboxes/errors.py), so a new runtime never touches them
        (("api",), ("docker", "insien.runtime")),
        # the core knows no HTTP and no runtime but the protocols of runtime/base.py
        (
            ("sandboxes",),
            (
                "docker",
                "insien.runtime.docker",
                "insien.runtime.kubernetes",
                "quart",
                "hypercorn",
                "insien.api",
            ),
        ),
        # the link carries bytes: no Docker frames, no HTTP, no core, no tenants (their byte
        # budgets are tenancy/budgets.py's)
        (
            ("link",),
            (
                "docker",
                "insien.runtime.docker",
                "quart",
                "insien.api",
                "insien.sandboxes",
                "insien.tenancy",
            ),
        ),
        # egress policy is pure logic below the core
        (
            ("egress",),
            (
                "docker",
                "insien.runtime",
                "insien.sandboxes",
                "insien.api",
                "insien.link",
                "quart",
                "trio",
            ),
        ),
        # what operators watch sits below the core: ids and numbers in, no HTTP framework
        (
            ("operations",),
            ("docker", "insien.runtime", "insien.sandboxes", "insien.api", "insien.link", "quart"),
        ),
        # tenancy sits below the core
        (("tenancy",), ("docker", "insien.runtime", "insien.sandboxes", "insien.api", "quart")),
        # settings import no runtime but its neutral types (runtime/base.py: the container
        # defaults, Isolation), nor the core's types: the core reads the settings, not back
        (
            ("config.py",),
            (
                "docker",
                "insien.runtime.docker",
                "insien.runtime.kubernetes",
                "insien.sandboxes",
                "insien.link",
            ),
        ),
        # the runtime knows nothing above it, the settings included (it is handed values)
        (
            ("runtime",),
            ("insien.sandboxes", "insien.link", "insien.api", "insien.tenancy", "insien.config"),
        ),
    ],
    ids=lambda value: "/".join(value) if isinstance(value, tuple) and "." not in value[0] else "",
)
def test_a_layer_imports_nothing_it_must_not(
    layer: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    assert offending(files(*layer), forbidden) == []


def test_only_the_docker_runtime_and_the_image_tooling_import_docker_py() -> None:
    outside = [
        p
        for p in files()
        if not p.relative_to(SOURCE).as_posix().startswith(("runtime/docker/", "tooling/"))
    ]
    assert offending(outside, ("docker",)) == []


def test_the_server_never_imports_the_command_line_tooling() -> None:
    """`tooling/` (the image builds of `insien image build`) is the command line's: no layer of
    the server reaches it, so its docker-py never runs in a server that uses another runtime."""
    server = [p for p in files() if p.relative_to(SOURCE).parts[0] not in ("tooling", "cli.py")]
    assert offending(server, ("insien.tooling",)) == []


def _reaches_past_the_gateway(source: str, name: str) -> list[str]:
    """Where a front takes a sandbox's link or marks it active itself instead of through the
    admission the core's gateway gave it (sandboxes/access.py)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        held = ast.unparse(node.value)
        if node.attr == "link" and held.split(".")[-1].lstrip("_") == "sandbox":
            found.append(f"{name}:{node.lineno}: {held}.link")
        if node.attr == "touch":
            found.append(f"{name}:{node.lineno}: {held}.touch")
    return found


def test_fronts_reach_sandboxes_only_through_the_gateway() -> None:
    """Every front goes through `Gate` (credentials, purpose, activity) and uses the
    admission's `link` and `active()`: none takes `sandbox.link` or calls `touch()` itself."""
    found = [
        line
        for path in files("api")
        for line in _reaches_past_the_gateway(path.read_text(), str(path.relative_to(SOURCE)))
    ]
    assert found == []


def test_the_gateway_check_finds_what_it_looks_for() -> None:
    sample = "def f(call, self):\n    call.sandbox.link.call()\n    self._sandbox.touch()\n"
    assert len(_reaches_past_the_gateway(sample, "sample")) == 2
    assert _reaches_past_the_gateway("admission.link.call()\nadmission.active()\n", "x") == []


NETWORK_CALLS = ("getaddrinfo", "open_tcp_stream", "open_ssl_over_tcp_stream", "create_connection")


def _network_calls(source: str, name: str) -> list[str]:
    """Where code resolves names or opens connections itself (`trio.open_tcp_stream`, ...)."""
    return [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute | ast.Name)
        and (node.attr if isinstance(node, ast.Attribute) else node.id) in NETWORK_CALLS
    ]


def test_the_core_decides_egress_and_leaves_the_network_to_the_link() -> None:
    """sandboxes/egress.py decides each connection out (egress/connection.py) and resolves,
    connects and relays only through link/outbound.py: the core opens no socket itself."""
    found = [
        line
        for path in files("sandboxes")
        for line in _network_calls(path.read_text(), str(path.relative_to(SOURCE)))
    ]
    assert offending(files("sandboxes"), ("socket",)) == []
    assert found == []


def test_the_network_check_finds_what_it_looks_for() -> None:
    sample = "async def f():\n    await trio.open_tcp_stream('a', 1)\n    getaddrinfo('a', 1)\n"
    assert len(_network_calls(sample, "sample")) == 2


def test_the_preview_proxy_leaves_who_may_see_it_to_preview_auth() -> None:
    """api/preview.py proxies for callers api/preview_auth.py admitted: it weighs no
    credentials itself (no `Credentials`, no `Surface`, no call on the gate's `admit`)."""
    proxy = SOURCE / "api" / "preview.py"
    weighing = ("insien.sandboxes.access.Credentials", "insien.sandboxes.access.Surface")
    assert offending([proxy], weighing) == []
    assert ".admit(" not in proxy.read_text()
