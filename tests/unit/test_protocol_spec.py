"""One protocol spec (issue 28): docs/protocol.schema.json is what `insien.protocol` generates
now, the server accepts nothing the schema refuses, every error code the agent can send is the
spec's, and the Python SDK, the JavaScript SDK and the console agree with the spec's events."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insien import protocol, protocol_spec
from insien_sandbox import _protocol, _rpc
from tests.fuzzing import requests
from tests.tools import missing, require_tool

ROOT = Path(__file__).parent.parent.parent
AGENT = ROOT / "agent" / "insien_agent"
JS = ROOT / "clients" / "js"
CONSOLE = ROOT / "src" / "insien" / "api" / "static" / "console" / "console.js"
SPEC: dict[str, Any] = json.loads((ROOT / protocol_spec.SCHEMA_PATH).read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SPEC)


def enum(name: str) -> set[str]:
    return set(SPEC["$defs"][name]["enum"])


def test_the_checked_in_files_are_what_generation_gives_now() -> None:
    for path, text in protocol_spec.outputs().items():
        assert (ROOT / path).read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `python -m insien.protocol_spec` (nox -s spec)"
        )


def test_the_command_rewrites_stale_files_and_check_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src" / "insien").mkdir(parents=True)
    (tmp_path / "src" / "insien" / "protocol.py").touch()
    assert protocol_spec.main(["--root", str(tmp_path), "--check"]) == 1
    assert "stale: docs/protocol.schema.json" in capsys.readouterr().err
    assert protocol_spec.main(["--root", str(tmp_path)]) == 0
    for path, text in protocol_spec.outputs().items():
        assert (tmp_path / path).read_text(encoding="utf-8") == text
    assert protocol_spec.main(["--root", str(tmp_path), "--check"]) == 0
    with pytest.raises(SystemExit):
        protocol_spec.main(["--root", str(tmp_path / "elsewhere")])


def test_the_spec_is_the_servers() -> None:
    VALIDATOR.check_schema(SPEC)
    assert SPEC["$defs"]["ProtocolVersion"]["const"] == protocol.PROTOCOL_VERSION
    assert enum("RequestType") == protocol.REQUEST_TYPES
    assert enum("ClientEvent") | enum("LinkEvent") == protocol.EVENT_TYPES
    assert not enum("ClientEvent") & enum("LinkEvent")
    assert enum("CreditedEvent") == protocol.CREDITED_TYPES
    assert enum("ErrorCode") == {str(code) for code in protocol.ErrorCode}
    assert set(SPEC["$defs"]["Request"]["discriminator"]["mapping"]) == protocol.REQUEST_TYPES


@pytest.mark.parametrize(
    "request_",
    [
        {"id": 1, "type": "exec"},  # no cmd
        {"id": 1, "type": "exec", "cmd": 5},
        {"id": 1, "type": "nope"},
        {"id": 1.5, "type": "ping"},
        {"type": "ping"},
        {"id": 1, "type": "resize", "pid": 3, "cols": 0, "rows": 24},
        {"id": 1, "type": "read", "path": "a", "encoding": "latin-1"},
        {"id": 1, "type": "spawn", "cmd": "sh", "pty": {"cols": 80, "extra": 1}},
    ],
)
def test_what_the_schema_refuses_the_server_refuses(request_: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(request_)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_request(request_)


@settings(max_examples=400, deadline=None)
@given(request_=requests(), request_id=st.one_of(st.text(max_size=5), st.integers()))
def test_every_request_the_server_accepts_the_schema_accepts(
    request_: dict[str, Any], request_id: str | int
) -> None:
    """The schema is never stricter than the server, so a client may validate with it (it is
    looser where JSON Schema cannot say it: NUL bytes, 1.0 as an integer)."""
    message = {**request_, "id": request_id}
    try:
        protocol.parse_request(message)
    except protocol.ProtocolError:
        return
    errors = [error.message for error in VALIDATOR.iter_errors(message)]
    assert not errors, (message, errors)


def agent_codes() -> dict[str, set[str]]:
    """Every error code the agent's source can send, by where it is written: code constants
    (`NAME = "NAME"` at module level), `AgentError("CODE", ...)` and `{"type": "error",
    "code": "CODE"}` literals."""
    found: dict[str, set[str]] = {}
    for path in sorted(AGENT.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
                and node.value.value == node.targets[0].id
                and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.targets[0].id)
            ):
                found.setdefault(f"{where} constants", set()).add(node.targets[0].id)
        for part in ast.walk(tree):
            if isinstance(part, ast.Call):
                name = getattr(part.func, "id", getattr(part.func, "attr", None))
                first = part.args[0] if part.args else None
                if name == "AgentError" and isinstance(first, ast.Constant):
                    found.setdefault(f"{where} literals", set()).add(str(first.value))
            if isinstance(part, ast.Dict):
                pairs = {
                    key.value: value.value
                    for key, value in zip(part.keys, part.values, strict=True)
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)
                }
                if pairs.get("type") == "error" and "code" in pairs:
                    found.setdefault(f"{where} literals", set()).add(str(pairs["code"]))
    return found


def test_every_error_code_the_agent_sends_is_in_the_spec() -> None:
    found = agent_codes()
    # Code constants live in the agent's errors module only, so this is where to add one.
    assert [where for where in found if where.endswith("constants")] == [
        "agent/insien_agent/errors.py constants"
    ]
    every = set().union(*found.values())
    assert {"BAD_REQUEST", "CONTEXT_DIED", "CONNECTION_REFUSED", "INTERNAL"} <= every
    assert "TOO_LARGE" in found["agent/insien_agent/wire.py literals"]  # the scan sees literals
    assert every <= enum("ErrorCode"), every - enum("ErrorCode")


def test_the_python_sdk_ends_a_request_where_the_spec_says() -> None:
    assert enum("ClientEvent") == _protocol.EVENT_TYPES
    for kind in enum("ClientEvent"):
        assert not _rpc.is_final({"id": "r1", "type": kind}), kind
    finals = {"error", *(f"{kind}Response" for kind in enum("RequestType"))} - enum("ClientEvent")
    for kind in finals:
        assert _rpc.is_final({"id": "r1", "type": kind}), kind


def test_the_js_sdk_takes_its_events_from_the_generated_module() -> None:
    source = (JS / "src" / "rpc.ts").read_text(encoding="utf-8")
    assert "import { EVENT_TYPES } from './protocol.js';" in source
    assert "return !EVENT_TYPES.has(String(message.type));" in source
    quoted = set(re.findall(r"'([A-Za-z]+)'", source))
    assert not quoted & enum("ClientEvent"), "rpc.ts names events of its own"


def test_the_built_js_sdk_ends_a_request_where_the_spec_says(tmp_path: Path) -> None:
    """rpc.ts compiled as `npm run build` does, its `isFinal` asked about every type."""
    node = require_tool("node", "apt-get install nodejs npm")
    tsc = JS / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        missing("clients/js's TypeScript", "npm ci --prefix clients/js")
    (tmp_path / "node_modules").symlink_to(JS / "node_modules")
    built = subprocess.run(
        [str(tsc), "-p", str(JS / "tsconfig.json"), "--outDir", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    kinds = sorted(enum("ClientEvent") | {"error", "execResponse", "listResponse", "exit"})
    script = (
        "import { isFinal } from './dist/rpc.js';"
        f"const kinds = {json.dumps(kinds)};"
        "console.log(JSON.stringify(kinds.filter((type) => !isFinal({ id: 'r1', type }))));"
    )
    ran = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert set(json.loads(ran.stdout)) == enum("ClientEvent")


def test_the_console_speaks_the_specs_types_and_codes() -> None:
    """console.js cannot import the spec (no build step): what it names must be in it."""
    source = CONSOLE.read_text(encoding="utf-8")
    sent = set(re.findall(r"\btype: '([A-Za-z]+)'", source))
    assert sent
    assert sent <= enum("RequestType"), sent - enum("RequestType")
    lists = re.findall(r"\[([^\]]*)\]\.includes\(msg\.type\)", source)
    assert lists, "the console's list of events before a final answer moved: update this test"
    for listed in lists:
        events = set(re.findall(r"'([A-Za-z]+)'", listed))
        assert events
        assert events <= enum("ClientEvent"), events - enum("ClientEvent")
    methods = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    codes = set(re.findall(r"""['"`]([A-Z][A-Z_]+)['"`]""", source)) - methods
    assert codes <= enum("ErrorCode"), codes - enum("ErrorCode")
