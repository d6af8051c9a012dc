"""The OpenAPI document is built from the routes themselves: every route of the app is in it
(a route without an `@operation` fails the build), and it is valid OpenAPI 3.1. Building the
app needs no Docker, so stand-in services do (the live answers are checked in
tests/e2e/test_openapi.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from openapi_spec_validator import validate
from quart import Blueprint

from insien.api.openapi import NOT_DOCUMENTED_PREFIXES, UndocumentedRoute, document, routes
from insien.app import create_app
from insien.config import Settings


def app() -> Any:
    return create_app(SimpleNamespace(manager=SimpleNamespace(), settings=Settings()))  # type: ignore[arg-type]


def test_every_route_is_in_the_document() -> None:
    made = app()
    built = document(made)
    validate(built)  # OpenAPI 3.1, schemas and references included
    for rule in made.url_map.iter_rules():
        if rule.rule.startswith(NOT_DOCUMENTED_PREFIXES) or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = {"get"} if rule.websocket else {m.lower() for m in rule.methods or ()}
        for method in methods - {"head", "options"}:
            assert method in built["paths"].get(path, {}), f"{method.upper()} {path} is missing"
    assert "put" in built["paths"]["/sandbox/{sandbox_id}/files"]  # served outside Quart


def test_a_route_without_an_operation_fails_the_build() -> None:
    made = app()
    extra = Blueprint("extra", __name__)

    @extra.get("/undocumented")
    async def undocumented() -> str:
        return "no"

    made.register_blueprint(extra)
    with pytest.raises(UndocumentedRoute, match="/undocumented"):
        routes(made)


def test_answers_are_closed_and_bodies_come_from_the_validating_models() -> None:
    built = document(app())
    schemas = built["components"]["schemas"]
    create = built["paths"]["/sandbox/create"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRequest"
    }
    assert schemas["CreateRequest"]["additionalProperties"] is False
    timeout = schemas["CreateRequest"]["properties"]["timeout"]["anyOf"][0]
    assert timeout == {"exclusiveMinimum": 0, "type": "number"}
    for name in ("SandboxInfo", "Created", "ErrorBody", "SandboxPage", "Metrics"):
        assert schemas[name]["additionalProperties"] is False, name
    assert set(create["responses"]) == {"200", "400", "401", "429", "503"}
    assert "Retry-After" in create["responses"]["429"]["headers"]
