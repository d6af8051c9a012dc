"""Where each request goes (api/router.py), decided once from its scope: every destination,
and which wins where two could claim a request."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypercorn.typing import Scope

from insien.api.router import (
    ToApp,
    ToEnvd,
    ToPort,
    ToUpload,
    UploadKind,
    route,
)

DOMAIN = "sbx.test"


def scope(
    path: str,
    *,
    method: str = "GET",
    kind: str = "http",
    headers: dict[str, str] | None = None,
    query: bytes = b"",
) -> Scope:
    made: dict[str, Any] = {
        "type": kind,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": query,
    }
    if kind == "http":
        made["method"] = method
    return cast(Scope, made)


E2B_HEADERS = {"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "49983"}


@pytest.mark.parametrize(
    ("request_scope", "expected"),
    [
        # by host, under INSIEN_DOMAIN: envd's ports to envd, the others to the program
        (
            scope("/health", headers={"Host": f"49983-abc.{DOMAIN}"}),
            ToEnvd("abc", 49983, "/health"),
        ),
        (
            scope("/execute", headers={"Host": f"49999-abc.{DOMAIN}"}),
            ToEnvd("abc", 49999, "/execute"),
        ),
        (scope("/x", headers={"Host": f"8000-abc.{DOMAIN}"}), ToPort("abc", 8000, "/x", "", True)),
        (
            scope("/", kind="websocket", headers={"Host": f"8000-abc.{DOMAIN}"}),
            ToPort("abc", 8000, "/", "", True),
        ),
        (scope("/", kind="websocket", headers={"Host": f"49983-abc.{DOMAIN}"}), ToApp()),
        # by E2B's headers under /e2b, and /files as the SDKs' file URLs send it
        (
            scope("/e2b/process.Process/Start", headers=E2B_HEADERS),
            ToEnvd("abc", 49983, "/process.Process/Start"),
        ),
        (scope("/files", headers={"E2b-Sandbox-Id": "abc"}), ToEnvd("abc", 49983, "/files")),
        (
            scope("/e2b/app", headers={**E2B_HEADERS, "E2b-Sandbox-Port": "3000"}),
            ToPort("abc", 3000, "/app", "", False),
        ),
        (
            scope("/e2b/ws", kind="websocket", headers={**E2B_HEADERS, "E2b-Sandbox-Port": "3000"}),
            ToPort("abc", 3000, "/ws", "", False),
        ),
        (scope("/e2b/ws", kind="websocket", headers={"E2b-Sandbox-Id": "abc"}), ToApp()),
        # a signed file URL in path mode names no sandbox
        (scope("/files", query=b"path=a&signature=v1_x"), ToEnvd("", 49983, "/files")),
        (scope("/e2b/files", query=b"path=a&signature=v1_x"), ToEnvd("", 49983, "/files")),
        (scope("/files", query=b"path=a"), ToApp()),
        # previews by path; the raw TCP WebSocket is Insien's own route
        (
            scope("/sandbox/abc/ports/8000/a/b"),
            ToPort("abc", 8000, "/a/b", "/sandbox/abc/ports/8000", False),
        ),
        (
            scope("/sandbox/abc/ports/8000"),
            ToPort("abc", 8000, "/", "/sandbox/abc/ports/8000", False),
        ),
        (scope("/sandbox/abc/ports/8000/tcp", kind="websocket"), ToApp()),
        (
            scope("/sandbox/abc/ports/8000/tcp"),
            ToPort("abc", 8000, "/tcp", "/sandbox/abc/ports/8000", False),
        ),
        # streamed uploads
        (scope("/sandbox/abc/files", method="PUT"), ToUpload(UploadKind.SANDBOX_FILE, "abc")),
        (scope("/volumes/data/files", method="PUT"), ToUpload(UploadKind.VOLUME_FILE, "data")),
        (
            scope("/e2b/volumecontent/vol_1/file", method="PUT"),
            ToUpload(UploadKind.E2B_VOLUME_CONTENT, "vol_1"),
        ),
        (scope("/e2b/templates/uploads/tok"), ToUpload(UploadKind.TEMPLATE_FILES, "tok")),
        # and everything else is Quart's
        (scope("/sandbox/abc/files"), ToApp()),
        (scope("/volumes/data/files"), ToApp()),
        (scope("/e2b/sandboxes"), ToApp()),
        (scope("/sandbox/create", method="POST"), ToApp()),
        (cast(Scope, {"type": "lifespan"}), ToApp()),
    ],
)
def test_each_request_has_one_destination(request_scope: Scope, expected: object) -> None:
    assert route(request_scope, DOMAIN) == expected


def test_without_a_domain_the_host_names_no_sandbox() -> None:
    assert route(scope("/x", headers={"Host": f"8000-abc.{DOMAIN}"}), None) == ToApp()


def test_the_host_wins_over_headers_and_paths() -> None:
    both = scope("/sandbox/zzz/ports/1/x", headers={**E2B_HEADERS, "Host": f"8000-abc.{DOMAIN}"})
    assert route(both, DOMAIN) == ToPort("abc", 8000, "/sandbox/zzz/ports/1/x", "", True)
