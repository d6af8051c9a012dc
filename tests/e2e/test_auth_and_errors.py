"""Every route refuses a missing or wrong key; unknown sandboxes are JSON 404s."""

from __future__ import annotations

import pytest
from trio_websocket import HandshakeError

from tests.conftest import Server
from tests.e2e.helpers import call, http, sandbox, websocket


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_rest_routes_need_the_key(server: Server, key: str | None) -> None:
    async with sandbox(server) as created, http(server, key=key) as client:
        sandbox_id = created["sandboxId"]
        for method, path in [
            ("POST", "/sandbox/create"),
            ("GET", f"/sandbox/{sandbox_id}/status"),
            ("POST", f"/sandbox/{sandbox_id}/destroy"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 401, path
            assert response.json()["code"] == "UNAUTHORIZED"
        # the failed destroy above did nothing
        async with http(server) as good:
            assert (await good.get(f"/sandbox/{sandbox_id}/status")).json()["connected"] is True


async def test_unknown_sandbox_is_a_json_404(server: Server) -> None:
    async with http(server) as client:
        for method, path in [
            ("GET", "/sandbox/00000000-0000-0000-0000-000000000000/status"),
            ("POST", "/sandbox/00000000-0000-0000-0000-000000000000/destroy"),
            ("GET", "/no/such/route"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 404
            assert response.json()["code"] == "NOT_FOUND"


async def test_health_needs_no_key(server: Server) -> None:
    async with http(server, key=None) as client:
        assert (await client.get("/health")).json() == {"status": "ok", "pool": 0}


async def test_websocket_refuses_without_credentials(server: Server) -> None:
    async with sandbox(server) as created:
        bare = created["agentUrl"].split("?")[0]
        for url, headers in [
            (bare, None),
            (bare + "?token=garbage", None),
            (bare, {"X-API-Key": "wrong"}),
        ]:
            with pytest.raises(HandshakeError) as info:
                async with websocket(url, headers):
                    pass
            assert getattr(info.value, "status_code", None) == 401


async def test_websocket_accepts_the_api_key_header(server: Server) -> None:
    async with sandbox(server) as created:
        bare = created["agentUrl"].split("?")[0]
        async with websocket(bare, server.headers) as ws:
            reply = await call(ws, {"id": 1, "type": "exec", "cmd": "true"})
            assert reply.get("exitCode") == 0, reply


async def test_a_token_opens_only_its_own_sandbox(server: Server) -> None:
    async with sandbox(server) as one, sandbox(server) as two:
        token_of_one = one["agentUrl"].split("?token=")[1]
        url = two["agentUrl"].split("?")[0] + "?token=" + token_of_one
        with pytest.raises(HandshakeError) as info:
            async with websocket(url):
                pass
        assert getattr(info.value, "status_code", None) == 401


async def test_websocket_to_unknown_sandbox_is_404(server: Server) -> None:
    url = server.url.replace("http://", "ws://") + "/agent/00000000-0000-0000-0000-000000000000"
    with pytest.raises(HandshakeError) as info:
        async with websocket(url, server.headers):
            pass
    assert getattr(info.value, "status_code", None) == 404
