"""`<port>-<sandboxId>.<INSIEN_DOMAIN>` hosts reach a sandbox's envd whatever the path, as
E2B's SDKs address sandboxes when `E2B_SANDBOX_URL` is unset (behind wildcard DNS)."""

from __future__ import annotations

import httpx

from tests.conftest import start_server, stop_server

DOMAIN = "sandboxes.test"


def test_host_routing_reaches_the_sandbox() -> None:
    process, server = start_server({"INSIEN_DOMAIN": DOMAIN, "INSIEN_POOL_SIZE": "0"}, "e2b-hosts")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            created = client.post(
                "/e2b/sandboxes", headers=server.headers, json={"templateID": "base"}
            ).json()
            sandbox_id, token = created["sandboxID"], created["envdAccessToken"]
            envd = {"Host": f"49983-{sandbox_id}.{DOMAIN}", "X-Access-Token": token}

            assert client.get("/health", headers=envd).status_code == 204
            written = client.post(
                "/files", params={"path": "/tmp/via-host.txt"}, headers=envd, content=b"host"
            )
            assert written.status_code == 200
            assert written.json() == [
                {"name": "via-host.txt", "type": "file", "path": "/tmp/via-host.txt"}
            ]
            listed = client.post(
                "/filesystem.Filesystem/ListDir",
                headers={**envd, "Content-Type": "application/json"},
                json={"path": "/tmp"},
            )
            assert "via-host.txt" in {e["name"] for e in listed.json()["entries"]}
            read = client.get("/files", params={"path": "/tmp/via-host.txt"}, headers=envd)
            assert read.content == b"host"

            # the control plane is not reachable through a sandbox host, and other hosts
            # under the domain are not sandboxes
            assert client.get("/e2b/sandboxes", headers=envd).status_code == 404
            other = client.get("/health", headers={"Host": f"api.{DOMAIN}"})
            assert other.json()["status"] == "ok"  # Insien's own /health, not a sandbox's
            wrong = {**envd, "Host": f"49983-{sandbox_id}x.{DOMAIN}"}
            assert client.get("/health", headers=wrong).status_code in (401, 502)
            port = {**envd, "Host": f"8080-{sandbox_id}.{DOMAIN}"}
            refused = client.get("/health", headers=port)
            assert refused.status_code == 502
            assert "port 8080 is not open" in refused.json()["message"]

            assert (
                client.delete(f"/e2b/sandboxes/{sandbox_id}", headers=server.headers).status_code
                == 204
            )
            assert client.get("/health", headers=envd).status_code == 502
    finally:
        assert stop_server(process) == 0
