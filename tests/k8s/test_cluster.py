"""The cluster the harness brings up does what the Kubernetes runtime relies on: a pod with
stdin runs the sandbox image, the attach subresource carries stdin and stdout over the
`v4.channel.k8s.io` WebSocket, and a second attach after the first closed finds the
container still running (stdinOnce false)."""

from __future__ import annotations

import secrets
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import trio
from httpx_ws import AsyncWebSocketSession, aconnect_ws

NAMESPACE = "default"
ECHO = "import sys\nfor line in sys.stdin:\n    print('got ' + line.strip(), flush=True)\n"


async def wait_running(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            pod: dict[str, Any] = (
                await api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
            ).json()
            if pod.get("status", {}).get("phase") == "Running":
                return pod
            await trio.sleep(0.2)


async def attach_and_echo(api: httpx.AsyncClient, name: str, text: str) -> bytes:
    url = (
        f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/attach"
        "?container=agent&stdin=true&stdout=true&stderr=true"
    )
    got = b""
    session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
        url, api, subprotocols=["v4.channel.k8s.io"]
    )
    async with session as ws:
        await ws.send_bytes(b"\x00" + text.encode())
        with trio.fail_after(30):
            while b"\n" not in got:
                message = await ws.receive_bytes()
                if message[:1] == b"\x01":
                    got += message[1:]
    return got


async def test_a_pod_attached_twice_over_the_api_server(api: httpx.AsyncClient) -> None:
    name = f"probe-{secrets.token_hex(3)}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"insien.test": "cluster"}},
        "spec": {
            "automountServiceAccountToken": False,
            "hostNetwork": True,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "agent",
                    "image": "insien-sandbox:latest",
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", ECHO],
                    "stdin": True,
                    "stdinOnce": False,
                    "tty": False,
                }
            ],
        },
    }
    made = await api.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
    assert made.status_code == 201, made.text
    try:
        await wait_running(api, name)
        assert await attach_and_echo(api, name, "one\n") == b"got one\n"
        # The first attach is closed; the container still runs and a second one works.
        assert await attach_and_echo(api, name, "two\n") == b"got two\n"
    finally:
        await api.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}?gracePeriodSeconds=0")
