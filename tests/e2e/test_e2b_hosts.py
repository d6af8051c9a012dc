"""`<port>-<sandboxId>.<INSIEN_DOMAIN>` hosts reach a sandbox's envd whatever the path, as
E2B's SDKs address sandboxes when `E2B_SANDBOX_URL` is unset (behind wildcard DNS), and any
other port is HTTP to the program listening on it (issue 14's host form)."""

from __future__ import annotations

import time

import httpx

from insien_sandbox import Sandbox
from tests.conftest import start_server, stop_server

DOMAIN = "sandboxes.test"


def test_host_routing_reaches_the_sandbox() -> None:
    process, server = start_server({"INSIEN_DOMAIN": DOMAIN, "INSIEN_POOL_SIZE": "0"}, "e2b-hosts")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            created = client.post(
                "/e2b/sandboxes",
                headers=server.headers,
                json={"templateID": "base", "network": {"allowPublicTraffic": False}},
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
            # the user's ports take the traffic token; the envd token is for envd alone
            assert (
                client.get(
                    "/health", headers={**envd, "Host": f"8080-{sandbox_id}.{DOMAIN}"}
                ).status_code
                == 401
            )
            port = {
                "Host": f"8080-{sandbox_id}.{DOMAIN}",
                "E2B-Traffic-Access-Token": created["trafficAccessToken"],
            }
            refused = client.get("/health", headers=port)
            assert refused.status_code == 502
            assert "nothing listens on port 8080" in refused.json()["message"]

            # other ports are HTTP to the program listening on them, by host or E2B's headers
            with Sandbox.connect(sandbox_id, server.api_key, server.url) as box:
                box.files.write("site/page.html", "<p>by host</p>")
                box.commands.run("python3 -m http.server 8080", background=True, cwd="site")
                probe = "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=1)"
                for _ in range(100):
                    if box.commands.run("python3", ["-c", probe]).exit_code == 0:
                        break
                    time.sleep(0.1)
            assert client.get("/page.html", headers=port).text == "<p>by host</p>"
            by_key = {"Host": f"8080-{sandbox_id}.{DOMAIN}", **server.headers}
            assert client.get("/page.html", headers=by_key).text == "<p>by host</p>"
            e2b = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "8080", **server.headers}
            assert client.get("/e2b/page.html", headers=e2b).text == "<p>by host</p>"
            anonymous = {"Host": f"8080-{sandbox_id}.{DOMAIN}"}
            assert client.get("/page.html", headers=anonymous).status_code == 401
            traffic = {**anonymous, "E2b-Traffic-Access-Token": created["trafficAccessToken"]}
            assert client.get("/page.html", headers=traffic).text == "<p>by host</p>"
            # allowPublicTraffic (E2B's default, here switched on live): no key, no token
            public = client.put(
                f"/sandbox/{sandbox_id}/network",
                headers=server.headers,
                json={"allowPublicTraffic": True},
            )
            assert public.json()["allowPublicTraffic"] is True
            assert client.get("/page.html", headers=anonymous).text == "<p>by host</p>"
            by_path = f"/sandbox/{sandbox_id}/ports/8080/page.html"
            assert client.get(by_path).text == "<p>by host</p>"
            assert client.get("/health", headers={"Host": envd["Host"]}).status_code == 401

            assert (
                client.delete(f"/e2b/sandboxes/{sandbox_id}", headers=server.headers).status_code
                == 204
            )
            assert client.get("/health", headers=envd).status_code == 502
    finally:
        assert stop_server(process) == 0
