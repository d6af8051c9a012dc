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
from tests.conftest import Server, start_server, stop_server
from tests.k8s.conftest import RUN


@pytest.fixture(scope="module")
def k8s_server() -> Iterator[Server]:
    process, server = start_server(
        {
            "INSIEN_RUNTIME_BACKEND": "kubernetes",
            "INSIEN_K8S_KUBECONFIG": str(RUN / "admin.kubeconfig"),
            "INSIEN_K8S_NAMESPACE": "default",
            "INSIEN_K8S_HOST_NETWORK": "true",
            "INSIEN_K8S_IMAGE_PULL_POLICY": "Never",
        },
        suffix="k8s",
    )
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
    (pod,) = await pods(api, sandbox_id)
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["annotations"]["insien.owner"] == "default"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert (container["stdin"], container.get("stdinOnce", False)) == (True, False)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"] == str(1 << 30)
    await trio.to_thread.run_sync(box.destroy)
    with trio.fail_after(30):
        while await pods(api, sandbox_id):  # noqa: ASYNC110 (destroy deletes the pod)
            await trio.sleep(0.2)
