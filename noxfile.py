"""Every developer task: `nox -s tests | lint | typecheck | spec | image | serve | bench |
deploy-image | k8s | k8s-bench`."""

from __future__ import annotations

import ast
import itertools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"
SERVER = ["-e", ".[test]"]
SDK = ["-e", "./clients/python[cli,mcp]"]
E2B = ["e2b==2.63.0", "e2b-code-interpreter==2.11.5"]
"""The stock E2B SDKs the E2B front is tested against (README: "Using E2B's SDKs")."""
JUPYTER = ["ipykernel>=7,<8", "jupyter-client>=8,<9"]
"""The code interpreter benchmark's baseline: `1+1` through jupyter_client to ipykernel."""


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against a real Docker Engine (builds the sandbox image if needed).
    `-- -m "not docker"` runs only what needs no Docker Engine: no npm, no image build."""
    session.install(*SERVER, *SDK, *E2B)
    if selects_docker(session.posargs):
        if shutil.which("npm") is None:
            # The JavaScript tests skip for want of node and npm (tests/tools.py; CI fails them).
            session.warn("npm is missing (apt-get install nodejs npm): the JavaScript tests skip")
        else:
            npm_ci = ("npm", "ci", "--no-audit", "--no-fund", "--prefix")
            # The stock e2b npm package for the JavaScript suite, at the version package-lock pins.
            session.run(*npm_ci, "tests/e2b_js", external=True)
            # playwright-core, which drives Debian's Chromium through the JS SDK's browser page.
            session.run(*npm_ci, "tests/js_browser", external=True)
            js_sdk(session)
        session.run("insien", "image", "build")
    session.run("pytest", *session.posargs)


def selects_docker(args: list[str]) -> bool:
    """Whether pytest with these arguments may run a test marked `docker`: False only for a
    `-m` expression that is false for every docker test (`-m "not docker"`), whatever other
    marks it has; anything this cannot read counts as True."""
    expression = None
    for at, arg in enumerate(args):
        if arg == "-m" and at + 1 < len(args):
            expression = args[at + 1]
        elif arg.startswith("-m") and not arg.startswith("--"):
            expression = arg[2:].removeprefix("=")
    if expression is None:
        return True
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return True
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - {"docker"})
    for values in itertools.product((False, True), repeat=len(names)):
        marks = {**dict(zip(names, values, strict=True)), "docker": True}
        try:
            if _holds(tree, marks):
                return True
        except ValueError:
            return True
    return False


def _holds(node: ast.expr, marks: dict[str, bool]) -> bool:
    """A pytest mark expression (names, `and`, `or`, `not`, brackets) for a test with `marks`."""
    if isinstance(node, ast.Name):
        return marks[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _holds(node.operand, marks)
    if isinstance(node, ast.BoolOp):
        results = [_holds(value, marks) for value in node.values]
        return all(results) if isinstance(node.op, ast.And) else any(results)
    raise ValueError(f"not a mark expression: {ast.dump(node)}")


def js_sdk(session: nox.Session) -> None:
    """Build `@insien/sandbox` (clients/js): `npm ci` installs its pinned TypeScript, and its
    `prepare` script compiles and type-checks it."""
    session.run("npm", "ci", "--no-audit", "--no-fund", "--prefix", "clients/js", external=True)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.17,<0.18")  # formatting changes between minor versions
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def spec(session: nox.Session) -> None:
    """Regenerate the protocol's spec (docs/protocol.schema.json) and the SDKs' event sets from
    src/insien/protocol.py; `-- --check` only reports the stale ones."""
    session.install("-e", ".")
    session.run("python", "-m", "insien.protocol_spec", *session.posargs)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the server, the agent, the SDK, the tests and the benchmarks."""
    session.install(
        "mypy>=2.4,<3",
        "types-docker",
        "types-jsonschema",
        "types-PyYAML",
        "matplotlib>=3.8",
        *SERVER,
        *SDK,
        *E2B,
        *JUPYTER,
    )
    session.run("mypy", "src", "agent", "clients/python/src", "tests", "bench", "deploy")


@nox.session(python=PYTHON)
def image(session: nox.Session) -> None:
    """Build the default sandbox image (pass --force to rebuild)."""
    session.install(*SERVER)
    session.run("insien", "image", "build", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against baselines measured in the same run (`-- --quick` for a smoke run)."""
    session.install(*SERVER, *SDK, *E2B, *JUPYTER, "matplotlib>=3.8")
    session.run("python", "-m", "bench.run", *session.posargs)
    # What the runtime Insien brings costs against the image's python3 (issue 31).
    session.run(
        "python", "-m", "bench.any_image", *(["--n", "3"] if "--quick" in session.posargs else [])
    )
    # An HTTPS request and a download through a secret binding vs a plain CONNECT (issue 30).
    session.run(
        "python",
        "-m",
        "bench.secret_egress",
        *(["--n", "20", "--size", "16"] if "--quick" in session.posargs else []),
    )
    # Small files into a volume vs the container's own layer; volume transfers with and
    # without a sandbox (issue 32).
    session.run(
        "python",
        "-m",
        "bench.volumes",
        *(
            ["--files", "200", "--rounds", "1", "--size", "8", "--n", "3"]
            if "--quick" in session.posargs
            else []
        ),
    )


@nox.session(name="deploy-image", python=PYTHON)
def deploy_image(session: nox.Session) -> None:
    """Build the server's own image (deploy/Dockerfile) for deploy/docker-compose.yml."""
    session.install(*SERVER)
    session.run("python", "deploy/build.py", *session.posargs)


@nox.session(name="console-assets", python=False)
def console_assets(session: nox.Session) -> None:
    """Refresh the console's vendored xterm.js from npm (console/package.json pins it)."""
    session.run("npm", "install", "--no-audit", "--no-fund", "--prefix", "console", external=True)
    static = "src/insien/api/static/console"
    modules = "console/node_modules/@xterm"
    for source, name in (
        (f"{modules}/xterm/lib/xterm.js", "xterm.js"),
        (f"{modules}/xterm/css/xterm.css", "xterm.css"),
        (f"{modules}/addon-fit/lib/addon-fit.js", "addon-fit.js"),
        (f"{modules}/xterm/LICENSE", "xterm-LICENSE"),
    ):
        text = Path(source).read_text(encoding="utf-8")
        kept = "\n".join(x for x in text.split("\n") if not x.startswith("//# sourceMappingURL"))
        Path(static, name).write_text(kept, encoding="utf-8")


@nox.session(name="console-shots", python=PYTHON)
def console_shots(session: nox.Session) -> None:
    """Screenshots of the web console (artifacts/console/), from its browser test."""
    session.install(*SERVER, *SDK)
    session.run(
        "npm", "ci", "--no-audit", "--no-fund", "--prefix", "tests/js_browser", external=True
    )
    session.run("insien", "image", "build")
    session.run("pytest", "tests/e2e/test_console.py", *session.posargs)


K8S_SHARED = (
    "tests/e2e/test_protocol_v1.py",
    "tests/e2e/test_sdk_v1.py",
    "tests/e2e/test_ports.py",
    "tests/e2e/test_e2b_python.py",
    "tests/attacks/test_tenancy.py",
    # Secrets (issue 30), the part that differs by backend: a pod's placeholders, CA trust and
    # what it holds, rotation and deletion, a bad upstream refused, bindings after a SIGKILL.
    *(
        f"tests/e2e/test_secrets.py::test_{name}"
        for name in (
            "curl_and_urllib_carry_the_real_secret_and_the_sandbox_holds_none",
            "rotation_and_deletion_apply_to_the_next_request",
            "an_upstream_with_a_bad_certificate_is_refused",
            "bindings_outlive_a_server_restart",
        )
    ),
)
"""Suites of the Docker run that `nox -s k8s` runs again on pods: the protocol (commands,
streams, PTY, files, timeouts), the SDK, ports, the E2B front, tenancy with quotas and
secrets."""
K8S_SHARED_ALL = (
    *K8S_SHARED,
    "tests/e2e/test_sdk_cancel.py",
    "tests/e2e/test_auth_and_errors.py",
    "tests/e2e/test_flow_control.py",
    "tests/e2e/test_cli_sandbox.py",
    "tests/e2e/test_mcp.py",
    "tests/e2e/test_egress.py",
    "tests/e2e/test_binary_channel.py",
    "tests/e2e/test_files_rest.py",
    "tests/e2e/test_seed_clients.py",
)
"""`nox -s k8s -- --all`: every backend-neutral suite (about ten minutes more)."""


@contextmanager
def k8s_cluster(session: nox.Session, *images: str) -> Iterator[list[str]]:
    """tests/k8s/cluster.sh up with these images, the command prefix that runs inside its
    network namespace, and down whatever happens."""
    session.run(
        "bash",
        "tests/k8s/cluster.sh",
        "up",
        env={"INSIEN_K8S_IMAGES": " ".join(images)},
        external=True,
    )
    try:
        yield ["nsenter", "--net=/run/netns/insien-k8s"]
    finally:
        session.run("bash", "tests/k8s/cluster.sh", "down", external=True)


@nox.session(python=PYTHON)
def k8s(session: nox.Session) -> None:
    """The Kubernetes suite: a throwaway cluster built from Debian's source (tests/k8s/
    cluster.sh, cached after the first build), the tests inside its network namespace, then
    suites of the Docker run again on pods (`-- --all` for every backend-neutral one)."""
    session.install(*SERVER, *SDK, *E2B)
    session.run("insien", "image", "build")
    session.run("python", "deploy/build.py")  # the server's image, for deploy/kubernetes
    with k8s_cluster(session, "insien-sandbox:latest", "insien-server:latest") as inside:
        options = [a for a in session.posargs if a != "--all"]
        session.run(
            *inside, "pytest", "tests/k8s", *options, env={"INSIEN_K8S": "1"}, external=True
        )
        shared = K8S_SHARED_ALL if "--all" in session.posargs else K8S_SHARED
        session.run(
            *inside,
            "pytest",
            *shared,
            *options,
            env={"INSIEN_K8S": "1", "INSIEN_TEST_BACKEND": "kubernetes"},
            external=True,
        )


GVISOR_SUITES = (
    "tests/e2e/test_protocol_v1.py",
    "tests/e2e/test_sdk_v1.py",
    "tests/e2e/test_e2b_python.py",
    "tests/attacks/test_root.py",
    "tests/attacks/test_agent_protection.py",
    "tests/attacks/test_containment.py",
)
"""Suites `nox -s gvisor` runs with every sandbox under runsc: the protocol, the SDK, the E2B
front, root where it is allowed and the escapes that must still fail."""


@nox.session(python=PYTHON)
def gvisor(session: nox.Session) -> None:
    """gVisor as a runtime of its own: suites of the Docker run again with every sandbox under
    runsc (`INSIEN_TEST_BACKEND=gvisor`; runsc registered with dockerd, as .ci/run does)."""
    session.install(*SERVER, *SDK, *E2B)
    session.run("insien", "image", "build")
    session.run("pytest", *GVISOR_SUITES, *session.posargs, env={"INSIEN_TEST_BACKEND": "gvisor"})


@nox.session(name="k8s-bench", python=PYTHON)
def k8s_bench(session: nox.Session) -> None:
    """Insien on pods against Kubernetes' own pod create + exec, in one run on the test
    cluster (bench/k8s.py; `-- --quick` for a smoke run)."""
    session.install(*SERVER, *SDK)
    session.run("insien", "image", "build")
    with k8s_cluster(session, "insien-sandbox:latest") as inside:
        session.run(*inside, "python", "-m", "bench.k8s", *session.posargs, external=True)
        # The agent's runtime sent to each pod, staged on the node, or none (issue 31).
        quick = ["--n", "3"] if "--quick" in session.posargs else []
        session.run(*inside, "python", "-m", "bench.k8s_any_image", *quick, external=True)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the service on this machine, building the sandbox image on first use."""
    session.install(*SERVER)
    session.run("insien", "serve", *session.posargs)
