"""Insien on the Kubernetes runtime, end to end: a real `insien serve` with
INSIEN_RUNTIME_BACKEND=kubernetes against the harness's cluster (both inside its network
namespace), driven by the Python SDK: a sandbox is a pod, commands and files go through the
agent over the pod's attach stream, and destroy deletes the pod."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from insien_sandbox import RPCError, Sandbox
from tests.backends import KUBERNETES
from tests.conftest import Server, start_server, stop_server
from tests.e2e.restartable import Restartable


@pytest.fixture(scope="module")
def k8s_server() -> Iterator[Server]:
    process, server = start_server({**KUBERNETES, "INSIEN_DISK_LIMIT": "1g"}, suffix="k8s")
    yield server
    assert stop_server(process) == 0, server.log()[-3000:]


async def pods(api: httpx.AsyncClient, sandbox_id: str) -> list[dict[str, Any]]:
    found = await api.get(
        "/api/v1/namespaces/default/pods",
        params={"labelSelector": f"insien.sandbox.id={sandbox_id}"},
    )
    items: list[dict[str, Any]] = found.json()["items"]
    return items


async def test_a_sandbox_is_a_pod_driven_over_attach(
    k8s_server: Server, api: httpx.AsyncClient
) -> None:
    def use() -> Sandbox:
        box = Sandbox(api_key=k8s_server.api_key, base_url=k8s_server.url)
        assert box.commands.run("echo hello from a pod").stdout == "hello from a pod\n"
        assert box.commands.run("id -u").stdout.strip() == "1000"  # not root
        box.files.write("notes/a.txt", "kept in the pod")
        assert box.files.read("notes/a.txt") == "kept in the pod"
        streamed: list[str] = []
        box.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
        assert "".join(streamed) == "1\n2\n3\n"
        with pytest.raises(RPCError):
            box.files.read("/nope")
        return box

    box = await trio.to_thread.run_sync(use)
    sandbox_id = str(box.sandbox_id)
    with trio.fail_after(10):  # the status says so up to a second after the agent answered
        while (pod := (await pods(api, sandbox_id))[0])["status"]["phase"] != "Running":  # noqa: ASYNC110
            await trio.sleep(0.1)
    assert pod["metadata"]["annotations"]["insien.owner"] == "default"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert (container["stdin"], container.get("stdinOnce", False)) == (True, False)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    limits = container["resources"]["limits"]
    assert (limits["memory"], limits["ephemeral-storage"]) == (str(1 << 30), "1Gi")
    await trio.to_thread.run_sync(box.destroy)
    with trio.fail_after(30):
        while await pods(api, sandbox_id):  # noqa: ASYNC110 (destroy deletes the pod)
            await trio.sleep(0.2)


async def ended_as(server: Server, sandbox_id: str) -> str:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"X-API-Key": server.api_key}
    ) as client:
        with trio.fail_after(60):
            while True:
                info = (await client.get(f"/sandboxes/{sandbox_id}")).json()
                if info["state"] == "ended":
                    return str(info["endReason"])
                await trio.sleep(0.2)


async def test_a_pod_deleted_from_outside_ends_its_sandbox(
    k8s_server: Server, api: httpx.AsyncClient
) -> None:
    box = await trio.to_thread.run_sync(
        lambda: Sandbox(api_key=k8s_server.api_key, base_url=k8s_server.url)
    )
    await trio.to_thread.run_sync(lambda: box.commands.run("true"))
    sandbox_id = str(box.sandbox_id)
    (pod,) = await pods(api, sandbox_id)
    name = pod["metadata"]["name"]
    await api.delete(f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")
    assert await ended_as(k8s_server, sandbox_id) == "container_gone"


async def test_oom_is_reported_and_what_kubernetes_lacks_is_refused(
    k8s_server: Server, api: httpx.AsyncClient
) -> None:
    def use() -> None:
        with Sandbox(
            api_key=k8s_server.api_key,
            base_url=k8s_server.url,
            resources={"memory": "256m", "cpu": 0.5},
        ) as box:
            hog = box.commands.run("python3 -c 'b = bytearray(1 << 30)'", timeout=60)
            assert hog.oom is True, hog
            assert box.commands.run("echo alive").stdout == "alive\n"
            (pod,) = trio.from_thread.run(pods, api, str(box.sandbox_id))
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert (limits["memory"], limits["cpu"]) == (str(256 << 20), "500m")
            answer = httpx.post(
                f"{k8s_server.url}/sandbox/{box.sandbox_id}/pause",
                headers={"X-API-Key": k8s_server.api_key},
            )
            assert (answer.status_code, answer.json()["code"]) == (501, "NOT_SUPPORTED")
            assert "not available on Kubernetes" in answer.json()["message"]

    await trio.to_thread.run_sync(use)


def test_a_killed_server_finds_its_pods_again() -> None:
    """SIGKILL the server while a sandbox runs a background process; a new server with the
    same identity recovers the sandbox from its pod's annotations and re-attaches."""
    one = Restartable("k8s-recovery")
    server = one.start(**KUBERNETES)
    try:
        made = httpx.post(
            f"{server.url}/sandbox/create",
            headers={"X-API-Key": server.api_key},
            json={"timeout": 600},
        )
        sandbox_id = str(made.json()["sandboxId"])
        # An object that does not own the sandbox, closed before the crash: no client of the
        # first server reconnects to the second behind the test's back.
        with Sandbox(api_key=server.api_key, base_url=server.url, sandbox_id=sandbox_id) as box:
            box.files.write("kept.txt", "before the crash")
            box.commands.run("sleep 300", background=True)
        one.kill()
        server = one.start(**KUBERNETES)
        again = Sandbox(api_key=server.api_key, base_url=server.url, sandbox_id=sandbox_id)
        assert again.files.read("kept.txt") == "before the crash"
        assert "sleep 300" in again.commands.run("ps -eo args").stdout
        again.destroy()
    finally:
        if one.process is not None and one.process.poll() is None:
            one.kill()
        one.start(**KUBERNETES, INSIEN_SHUTDOWN_ENDS_SANDBOXES="true")
        assert one.stop() == 0


async def test_a_warm_pool_of_pods_hands_one_over(api: httpx.AsyncClient) -> None:
    """A pooled pod is claimed by a create: the sandbox is the pod started before it, and its
    sealed owner (Docker's container name) is now its annotation."""
    process, server = start_server({**KUBERNETES, "INSIEN_POOL_SIZE": "1"}, suffix="k8s-pool")
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"X-API-Key": server.api_key}
        ) as client:
            with trio.fail_after(60):
                while (await client.get("/health")).json()["pool"] != 1:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            made = (await client.post("/sandbox/create")).json()
            (pod,) = await pods(api, made["sandboxId"])
            annotations = pod["metadata"]["annotations"]
            assert annotations["insien.pool"] != ""  # started for the pool
            with trio.fail_after(10):
                while "-owner-default-" not in annotations.get("insien.name", ""):
                    await trio.sleep(0.1)  # the claim's rename runs in the background
                    (pod,) = await pods(api, made["sandboxId"])
                    annotations = pod["metadata"]["annotations"]
            ran = await client.post(f"/sandbox/{made['sandboxId']}/destroy")
            assert ran.status_code == 200
    finally:
        assert stop_server(process) == 0


async def test_an_image_no_node_has_fails_the_create_with_the_pods_reason(
    k8s_server: Server, api: httpx.AsyncClient
) -> None:
    """The interpreter image is an allowed template but was never loaded into the test
    cluster (and pulls are off): the create answers at once with the kubelet's reason, and
    leaves no pod behind."""
    async with httpx.AsyncClient(base_url=k8s_server.url, headers=k8s_server.headers) as client:
        with trio.fail_after(60):
            made = await client.post(
                "/sandbox/create", json={"template": "insien-interpreter:latest"}, timeout=60
            )
    assert made.status_code == 503, made.text
    assert "ErrImageNeverPull" in made.json()["message"]
    listed = await api.get(
        "/api/v1/namespaces/default/pods",
        params={"labelSelector": f"insien.instance={k8s_server.instance}"},
    )
    with trio.fail_after(30):
        while listed.json()["items"]:
            await trio.sleep(0.2)
            listed = await api.get(
                "/api/v1/namespaces/default/pods",
                params={"labelSelector": f"insien.instance={k8s_server.instance}"},
            )


async def test_a_sandbox_no_node_can_take_fails_at_once_with_the_schedulers_reason(
    k8s_server: Server, api: httpx.AsyncClient
) -> None:
    """The only node cordoned: the create does not wait for one to appear, it answers with
    what the scheduler said."""
    (node,) = (await api.get("/api/v1/nodes")).json()["items"]
    path = f"/api/v1/nodes/{node['metadata']['name']}"
    merge = {"Content-Type": "application/merge-patch+json"}
    (
        await api.patch(path, json={"spec": {"unschedulable": True}}, headers=merge)
    ).raise_for_status()
    try:
        async with httpx.AsyncClient(
            base_url=k8s_server.url, headers=k8s_server.headers, timeout=60
        ) as client:
            with trio.fail_after(30):
                made = await client.post("/sandbox/create", json={})
        assert made.status_code == 503, made.text
        assert "no node can run the sandbox" in made.json()["message"]
        assert "unschedulable" in made.json()["message"]  # the scheduler's own words
    finally:
        await api.patch(path, json={"spec": {"unschedulable": None}}, headers=merge)
