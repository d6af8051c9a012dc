"""The RPC protocol as data, generated from `insien.protocol`: a JSON Schema of every request
with the protocol's enumerations (request types, events, error codes) in `$defs`, and from
that schema the event sets of the Python and JavaScript SDKs, which cannot import the server.

`python -m insien.protocol_spec` (or `nox -s spec`) rewrites the files from a checkout's root;
`--check` only says which are stale. tests/unit/test_protocol_spec.py fails when any is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from . import protocol

SCHEMA_PATH = Path("docs/protocol.schema.json")
PYTHON_SDK_PATH = Path("clients/python/src/insien_sandbox/_protocol.py")
JS_SDK_PATH = Path("clients/js/src/protocol.ts")
GENERATED = (
    "Generated from docs/protocol.schema.json by `python -m insien.protocol_spec`: do not edit."
)
EVENTS_DOC = "Messages that answer a request without ending it; every other type is final."


def _enum(values: Sequence[str], description: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


def schema() -> dict[str, Any]:
    """The whole spec: a JSON Schema (draft 2020-12) of a client request, with the message
    types, events and error codes as `$defs` of their own for the SDKs and tests to read."""
    request: Any = Annotated[Union[tuple(protocol.REQUESTS.values())], Field(discriminator="type")]  # noqa: UP007
    requests = TypeAdapter(request).json_schema()
    defs: dict[str, Any] = dict(requests.pop("$defs"))
    defs["Request"] = {
        "description": "A client request; each has an `id` and gets exactly one final answer.",
        **requests,
    }
    defs["ProtocolVersion"] = {"const": protocol.PROTOCOL_VERSION}
    defs["RequestType"] = _enum(sorted(protocol.REQUEST_TYPES), "Every request type.")
    defs["ClientEvent"] = _enum(
        sorted(protocol.CLIENT_EVENT_TYPES),
        f"{EVENTS_DOC} The types a client sees.",
    )
    defs["LinkEvent"] = _enum(
        sorted(protocol.LINK_EVENT_TYPES),
        f"{EVENTS_DOC} Between the server and the agent only, never relayed to a client.",
    )
    defs["CreditedEvent"] = _enum(
        sorted(protocol.CREDITED_TYPES),
        "Events the agent sends only as far as the server's credit allows (flow control).",
    )
    defs["ErrorCode"] = _enum(
        [str(code) for code in protocol.ErrorCode],
        "The `code` of an `error` message (and of the REST API's error bodies).",
    )
    defs["Error"] = {
        "description": "The final answer of a request that failed.",
        "type": "object",
        "properties": {
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            "type": {"const": "error"},
            "code": {"$ref": "#/$defs/ErrorCode"},
            "message": {"type": "string"},
        },
        "required": ["id", "type", "code", "message"],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Insien RPC protocol, version {protocol.PROTOCOL_VERSION}",
        "description": (
            "Generated from src/insien/protocol.py by `python -m insien.protocol_spec`: do not"
            " edit. Validates one client request; docs/protocol.md says what each does."
        ),
        "$ref": "#/$defs/Request",
        "$defs": dict(sorted(defs.items())),
    }


def render_schema(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def client_events(spec: dict[str, Any]) -> list[str]:
    """The event types a client sees, as the spec lists them."""
    return list(spec["$defs"]["ClientEvent"]["enum"])


def render_python_sdk(spec: dict[str, Any]) -> str:
    """`insien_sandbox._protocol`, formatted as `ruff format` leaves it."""
    items = "".join(f'        "{name}",\n' for name in client_events(spec))
    return (
        f'"""{GENERATED}"""\n\n'
        "from __future__ import annotations\n\n"
        f"EVENT_TYPES = frozenset(\n    {{\n{items}    }}\n)\n"
        f'"""{EVENTS_DOC}"""\n'
    )


def render_js_sdk(spec: dict[str, Any]) -> str:
    """`clients/js/src/protocol.ts`."""
    items = "".join(f"  '{name}',\n" for name in client_events(spec))
    return (
        f"// {GENERATED}\n\n"
        f"/** {EVENTS_DOC} */\n"
        f"export const EVENT_TYPES: ReadonlySet<string> = new Set([\n{items}]);\n"
    )


def outputs() -> dict[Path, str]:
    """Every generated file (relative to a checkout's root) and what it must hold."""
    spec = schema()
    return {
        SCHEMA_PATH: render_schema(spec),
        PYTHON_SDK_PATH: render_python_sdk(spec),
        JS_SDK_PATH: render_js_sdk(spec),
    }


def stale(root: Path) -> list[Path]:
    """The generated files under `root` that differ from what generation gives now."""
    return [
        path
        for path, text in outputs().items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m insien.protocol_spec",
        description="Regenerate the protocol's JSON Schema and the SDKs' event sets.",
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout's root")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not (root / "src" / "insien" / "protocol.py").is_file():
        parser.error(f"{root} is not an Insien checkout (no src/insien/protocol.py)")
    behind = stale(root)
    if args.check:
        for path in behind:
            print(f"stale: {path} (run `python -m insien.protocol_spec`)", file=sys.stderr)
        return 1 if behind else 0
    for path, text in outputs().items():
        if path in behind:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
