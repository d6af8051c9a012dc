"""`GET /openapi.json` agrees with what the server really answers: every route is driven for
real here, and each answer's status must be one its operation documents and its body must
validate against the documented schema. `GET /docs` is a page that needs nothing from
outside this server."""

from __future__ import annotations

import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from tests.conftest import Server
from tests.e2e.helpers import http


class Checker:
    """Checks answers against the document, and remembers which operations it has seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str]] = set()

    def operation(self, method: str, url: str) -> tuple[str, dict[str, Any]]:
        path = httpx.URL(url).path
        for template, methods in self.document["paths"].items():
            nested = template.replace("{path}", ".*")  # the rest of a proxied path
            pattern = "^" + re.sub(r"{[^}]+}", "[^/]+", nested) + "$"
            if re.match(pattern, path) and method in methods:
                return template, methods[method]
        raise AssertionError(f"{method.upper()} {path} is not in the document")

    def check(self, response: httpx.Response) -> httpx.Response:
        method = response.request.method.lower()
        template, op = self.operation(method, str(response.request.url))
        status = str(response.status_code)
        assert status in op["responses"], f"{method} {template} answered {status}, undocumented"
        self.seen.add((method, template))
        content = op["responses"][status].get("content", {})
        if "application/json" in content:
            schema = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.document["components"],
                **content["application/json"]["schema"],
            }
            errors = list(Draft202012Validator(schema).iter_errors(response.json()))
            assert not errors, f"{method} {template} {status}: {errors[0].message}"
        elif "application/octet-stream" in content:
            assert response.headers["content-type"].startswith("application/octet-stream")
        return response


async def test_live_answers_match_the_document(server: Server) -> None:
    async with http(server) as client:
        document = (await client.get("/openapi.json")).json()
        checker = Checker(document)
        check = checker.check
        checker.seen.add(("get", "/openapi.json"))

        check(await client.get("/health"))
        made = check(await client.post("/sandbox/create", json={"metadata": {"k": "v"}})).json()
        sandbox_id = made["sandboxId"]
        check(await client.get(f"/sandbox/{sandbox_id}/status"))
        check(await client.post(f"/sandbox/{sandbox_id}/connect"))
        check(await client.get(f"/sandboxes/{sandbox_id}"))
        check(await client.get("/sandboxes", params={"limit": "1", "metadata.k": "v"}))
        check(await client.post(f"/sandbox/{sandbox_id}/keepalive", json={"timeout": 300}))
        check(await client.get(f"/sandboxes/{sandbox_id}/metrics"))
        check(await client.get(f"/sandboxes/{sandbox_id}/logs"))
        check(await client.get(f"/sandboxes/{sandbox_id}/network"))
        policy = {"allowOut": ["example.org:443"], "allowPublicTraffic": False}
        check(await client.put(f"/sandbox/{sandbox_id}/network", json=policy))
        check(await client.put(f"/sandbox/{sandbox_id}/network", json={"allowOut": ["a b"]}))
        up = await client.put(
            f"/sandbox/{sandbox_id}/files", params={"path": "a.txt"}, content=b"hello"
        )
        check(up)
        down = check(await client.get(f"/sandbox/{sandbox_id}/files", params={"path": "a.txt"}))
        assert down.content == b"hello"
        check(await client.post(f"/sandbox/{sandbox_id}/kill-all"))
        check(await client.post(f"/sandbox/{sandbox_id}/pause"))
        check(await client.post(f"/sandbox/{sandbox_id}/resume"))
        template = check(await client.post(f"/sandbox/{sandbox_id}/snapshot")).json()["template"]
        check(await client.get("/snapshots"))
        check(await client.delete(f"/snapshots/{template}"))
        # this server has no INSIEN_SECRETS_KEY: every secrets route says so (503); the
        # routes with a key are driven in tests/e2e/test_secrets.py
        check(await client.post("/secrets", json={"name": "A", "value": "v"}))
        check(await client.get("/secrets"))
        check(await client.put("/secrets/A", json={"value": "v"}))
        check(await client.delete("/secrets/A"))
        made_volume = await client.post("/volumes", json={"name": "openapi", "sizeLimit": "1m"})
        volume = f"/volumes/{check(made_volume).json()['name']}"
        check(await client.get("/volumes"))
        check(await client.put(f"{volume}/files", params={"path": "a/b"}, content=b"hi"))
        check(await client.get(f"{volume}/files", params={"path": "a/b"}))
        check(await client.get(f"{volume}/entries", params={"path": "a"}))
        check(await client.post(f"{volume}/folders", params={"path": "c"}))
        check(await client.delete(f"{volume}/files", params={"path": "a"}))
        check(await client.get(volume))
        check(await client.delete(volume))
        check(await client.get(volume))  # gone: 404
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        # a port nobody listens on refuses the WebSocket handshake with a documented error; a
        # connection of its own, since the server closes a refused handshake's connection
        async with http(server) as handshake:
            check(await handshake.get(f"/sandbox/{sandbox_id}/ports/7999/tcp", headers=upgrade))
        # HTTP to a port: the app's own answers are not the document's; Insien's refusals are
        for method in ("GET", "POST", "PUT", "DELETE"):
            check(await client.request(method, f"/sandbox/{sandbox_id}/ports/7999/x/y"))
        check(await client.post(f"/sandboxes/{sandbox_id}/ports/8000/url", json={"expires": 60}))
        check(await client.post(f"/sandboxes/{sandbox_id}/ports/8000/url", json={"expires": -1}))
        check(await client.post(f"/sandbox/{sandbox_id}/destroy"))

        # error answers, in the documented shape and statuses
        check(await client.post("/sandbox/create", json={"timeout": "soon"}))
        check(await client.post("/sandbox/create", json={"surprise": 1}))
        check(await client.get("/sandboxes", params={"state": "sleeping"}))
        check(await client.get("/sandboxes", params={"limit": "0"}))
        check(await client.get(f"/sandbox/{sandbox_id}/files"))  # no path: 400
        check(await client.post("/sandbox/nope/destroy"))
        check(await client.get("/sandboxes/nope/metrics"))
        check(await client.delete("/snapshots/insien-snapshot:nope"))
        check(await client.get("/sandboxes", headers={"X-API-Key": "wrong"}))
        check(await client.get("/metrics"))  # this server set no metrics token: off, 404
        check(await client.post("/sandbox/nope/connect"))
        check(await client.get("/console"))
        async with client.stream("GET", "/events") as events:  # a stream: its head is enough
            assert check(events).headers["content-type"].startswith("text/event-stream")

        page = check(await client.get("/docs"))
        assert page.headers["content-type"].startswith("text/html")
        assert "/openapi.json" in page.text
        assert not re.search(r"(src|href)=\"https?://", page.text)  # nothing from a CDN
        checker.seen.add(("get", "/docs"))

    documented = {(m, p) for p, ms in document["paths"].items() for m in ms}
    websocket = {("get", "/agent/{sandbox_id}")}  # driven by every protocol test
    assert documented - websocket - checker.seen == set()
