"""The trust boundary of E2B's Secrets API and `network.rules` (issue 30): the routes take the
tenant's API key only (a sandbox's envd or traffic token opens none of them), and one tenant
cannot read, rotate, delete or bind another's secret, by name or by id. Before, `/e2b/secrets`
answered 501 and rules a 400 for every tenant alike; these are the answers now."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_e2b_network_rules import Two, rule, two_tenants


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    with two_tenants(tmp_path_factory.mktemp("e2b-secrets-attacks"), "e2b-secrets-attacks") as made:
        yield made


def call(two: Two, method: str, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{two.server.url}/e2b{path}", headers=headers, timeout=60, **kw)


def test_a_sandbox_token_opens_no_secret_route(two: Two) -> None:
    alpha = {"X-API-Key": two.alpha}
    made = call(two, "POST", "/secrets", alpha, json={"name": "guarded", "value": two.value()})
    assert made.status_code == 201, made.text
    created = call(two, "POST", "/sandboxes", alpha, json={"templateID": "base"})
    assert created.status_code == 201, created.text
    tokens = [created.json()["envdAccessToken"], created.json()["trafficAccessToken"]]
    try:
        for token in tokens:
            for carried in (
                {"X-API-Key": token},
                {"Authorization": f"Bearer {token}"},
                {"X-Access-Token": token},
                {"E2b-Traffic-Access-Token": token},
            ):
                for method, path, body in (
                    ("GET", "/secrets", None),
                    ("GET", "/secrets/guarded", None),
                    ("POST", "/secrets/guarded", {"value": "stolen"}),
                    ("POST", "/secrets", {"name": "planted", "value": "x"}),
                    ("DELETE", "/secrets/guarded", None),
                ):
                    answer = call(two, method, path, carried, json=body)
                    assert answer.status_code == 401, (method, path, carried.keys(), answer.text)
    finally:
        call(two, "DELETE", f"/sandboxes/{created.json()['sandboxID']}", alpha)
    info = call(two, "GET", "/secrets/guarded", alpha).json()
    assert info["currentVersion"] == 1
    assert call(two, "DELETE", "/secrets/guarded", alpha).status_code == 204


def test_another_tenant_cannot_reach_or_bind_your_secret(two: Two) -> None:
    alpha, beta = {"X-API-Key": two.alpha}, {"X-API-Key": two.beta}
    value = two.value()
    made = call(two, "POST", "/secrets", alpha, json={"name": "alpha-key", "value": value})
    assert made.status_code == 201, made.text
    secret_id = made.json()["secretID"]
    seen = [call(two, "GET", "/secrets", beta)]
    assert seen[0].json() == []
    for ref in ("alpha-key", "alpha_key", "ALPHA_KEY", secret_id):
        seen.append(call(two, "GET", f"/secrets/{ref}", beta))
        seen.append(call(two, "POST", f"/secrets/{ref}", beta, json={"value": "beta's"}))
        seen.append(call(two, "DELETE", f"/secrets/{ref}", beta))
        assert [answer.status_code for answer in seen[-3:]] == [404, 404, 404]
        bound = call(
            two,
            "POST",
            "/sandboxes",
            beta,
            json={"network": {"rules": rule("api.test", "X-K", f"${{e2b.secrets.{ref}}}")}},
        )
        assert bound.status_code == 400
        assert f"you have no secret {ref!r}" in bound.json()["message"]
        seen.append(bound)
    assert all(value not in answer.text for answer in seen)
    # Alpha's secret is untouched, and no answer to beta held its value.
    assert call(two, "GET", f"/secrets/{secret_id}", alpha).json()["currentVersion"] == 1
    assert call(two, "DELETE", f"/secrets/{secret_id}", alpha).status_code == 204
