"""`GET /openapi.json` and `GET /docs`: the REST API described from the routes themselves.

Each route carries an `Operation` (the `@operation(...)` decorator): its summary, the pydantic
models of its query, body and answer (`schemas.py`, the same ones it validates and answers
with), and the error statuses it can give. The document is built by walking the app's URL map,
so a route without an `Operation` fails the build (and the test that builds it); routes served
outside Quart (the streaming upload) are declared in `OUTSIDE_QUART`. The E2B front under
`/e2b` speaks E2B's own API (docs/e2b.md) and is not part of this document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Quart, Response, current_app

from .. import __version__
from . import schemas

F = TypeVar("F", bound=Callable[..., Any])

REF = "#/components/schemas/{model}"
NOT_DOCUMENTED_PREFIXES = ("/e2b", "/console/static")
STATUS_TEXT = {
    400: "The request does not fit (the message says which field and why).",
    401: "Missing or invalid `X-API-Key`.",
    403: "Not allowed.",
    404: "No such sandbox (or not yours), file or snapshot.",
    409: "It exists already, or is not empty.",
    413: "Too large.",
    429: "Over a quota or rate: `Retry-After` says when to try again.",
    503: "Docker, the sandbox image or the sandbox's agent is not available.",
}


@dataclass(frozen=True)
class Operation:
    """What the document says about one route."""

    summary: str
    answer: (
        type[BaseModel]
        | Literal["bytes", "websocket", "html", "openapi", "proxied", "metrics", "events"]
    )
    body: type[BaseModel] | Literal["bytes"] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    tag: str = "sandboxes"
    description: str | None = None


def operation(**fields: Any) -> Callable[[F], F]:
    """Attach an Operation to a route's view function (put it under the route decorator)."""
    described = Operation(**fields)

    def attach(view: F) -> F:
        view.__insien_operation__ = described  # type: ignore[attr-defined]
        return view

    return attach


OUTSIDE_QUART: list[tuple[str, str, Operation]] = [
    (
        "put",
        "/sandbox/{sandbox_id}/files",
        Operation(
            summary="Upload a file (raw bytes streamed in, no base64)",
            answer=schemas.Uploaded,
            body="bytes",
            query=schemas.FileQuery,
            errors=(400, 404, 413, 429, 503),
            tag="files",
        ),
    ),
    *(
        (
            method,
            "/sandbox/{sandbox_id}/ports/{port}/{path}",
            Operation(
                summary="HTTP to the program listening on `port` in the sandbox (any method)",
                description=(
                    "Proxied as it is, bodies streamed both ways; `path` may be empty or "
                    "nested. Authorised by `X-API-Key`, or a preview token as `?insien_token=` "
                    "(then kept in the `insien_port` cookie) or that cookie. A port nobody "
                    "listens on answers 502 `CONNECTION_REFUSED`. The answer is the app's own."
                ),
                answer="proxied",
                errors=(400, 404, 429, 502),
                tag="ports",
            ),
        )
        for method in ("get", "post", "put", "delete")
    ),
]
"""Routes served by ASGI handlers in front of Quart (see files.py and preview.py)."""


class UndocumentedRoute(RuntimeError):
    """A route has no Operation: describe it (the OpenAPI test fails until then)."""


def _path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def routes(app: Quart) -> list[tuple[str, str, Operation]]:
    """Every documented (method, OpenAPI path, Operation) of the app, sorted."""
    found = list(OUTSIDE_QUART)
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(NOT_DOCUMENTED_PREFIXES) or rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        described = getattr(view, "__insien_operation__", None)
        if described is None:
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) has no @operation")
        methods = {"get"} if rule.websocket else {m.lower() for m in rule.methods or ()}
        for method in sorted(methods - {"head", "options"}):
            found.append((method, _path(rule.rule), described))
    return sorted(found, key=lambda item: (item[1], item[0]))


def _models(operations: list[tuple[str, str, Operation]]) -> dict[str, Any]:
    inputs = {op.body for _, _, op in operations if isinstance(op.body, type)}
    inputs |= {op.query for _, _, op in operations if op.query is not None}
    outputs = {op.answer for _, _, op in operations if isinstance(op.answer, type)}
    outputs.add(schemas.ErrorBody)
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)
    ] + [(m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__)]
    _, top = models_json_schema(pairs, ref_template=REF)
    return dict(top.get("$defs", {}))


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _parameters(path: str, op: Operation, components: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^}]+)}", path)
    ]
    if op.query is not None:
        model = components[op.query.__name__]
        for name, schema in model.get("properties", {}).items():
            found.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in model.get("required", []),
                    "schema": {k: v for k, v in schema.items() if k != "description"},
                    **({"description": schema["description"]} if "description" in schema else {}),
                }
            )
    return found


def _answers(op: Operation) -> dict[str, Any]:
    answers: dict[str, Any]
    if op.answer == "websocket":
        answers = {"101": {"description": "Switching to the WebSocket (docs/protocol.md)."}}
    elif op.answer == "bytes":
        answers = {
            "200": {
                "description": "The file's bytes, streamed.",
                "headers": {"X-Insien-File-Size": {"schema": {"type": "integer"}}},
                "content": {"application/octet-stream": {"schema": {}}},
            }
        }
    elif op.answer == "proxied":
        answers = {"default": {"description": "Whatever the program in the sandbox answers."}}
    elif op.answer == "html":
        answers = {"200": {"description": "A page.", "content": {"text/html": {"schema": {}}}}}
    elif op.answer == "metrics":
        answers = {
            "200": {
                "description": "Prometheus text exposition format 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
    elif op.answer == "events":
        answers = {
            "200": {
                "description": "Server-Sent Events: `id`, `event` (the type) and `data` (the "
                "event as JSON) per event; comments as keep-alives.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        }
    elif op.answer == "openapi":
        answers = {"200": {"description": "This document.", "content": _json({"type": "object"})}}
    else:
        answers = {
            "200": {"description": op.answer.__doc__ or "OK", "content": _json(_ref(op.answer))}
        }
    statuses = set(op.errors) | ({401} if op.auth else set())
    for status in sorted(statuses):
        answer: dict[str, Any] = {
            "description": STATUS_TEXT.get(status, "Failed."),
            "content": _json(_ref(schemas.ErrorBody)),
        }
        if status == 429:
            answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        answers[str(status)] = answer
    return answers


def document(app: Quart) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app's REST API."""
    operations = routes(app)
    components = _models(operations)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
            "tags": [op.tag],
            "parameters": _parameters(path, op, components),
            "responses": _answers(op),
        }
        if op.description:
            entry["description"] = op.description
        if op.auth:
            entry["security"] = [{"apiKey": []}]
        if op.body == "bytes":
            entry["requestBody"] = {
                "required": True,
                "content": {"application/octet-stream": {"schema": {}}},
            }
        elif op.body is not None:
            entry["requestBody"] = {"required": False, "content": _json(_ref(op.body))}
        paths.setdefault(path, {})[method] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Insien",
            "version": __version__,
            "description": (
                "Self-hosted code sandboxes. Errors are `{code, message}` with a status. "
                "The RPC protocol on the WebSocket is docs/protocol.md; the E2B-compatible "
                "API under /e2b is E2B's own (docs/e2b.md)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


def docs_blueprint() -> Blueprint:
    bp = Blueprint("docs", __name__)
    built: dict[str, Any] = {}

    @bp.get("/openapi.json")
    @operation(summary="This API, as OpenAPI 3.1", answer="openapi", auth=False, tag="meta")
    async def openapi_json() -> Any:
        if "document" not in built:  # the routes never change once the app is made
            built["document"] = document(current_app)
        return built["document"]

    @bp.get("/docs")
    @operation(summary="This API, rendered (no CDN)", answer="html", auth=False, tag="meta")
    async def docs_page() -> Any:
        page = files("insien.api").joinpath("static/docs.html").read_text(encoding="utf-8")
        return Response(page, mimetype="text/html")

    return bp
