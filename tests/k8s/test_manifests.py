"""deploy/kubernetes/insien.yaml applies to the real cluster (with tests/k8s/test-cluster-
patch.yaml for what that cluster lacks: a network plugin, kube-proxy, a registry), the server
runs in a pod under its own service account, limited by the manifests' Role, and serves a
create: its sandbox is a pod in the server's namespace, and a command runs in it."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from insien_sandbox import Sandbox
from tests.k8s.conftest import RUN

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("INSIEN_K8S_CACHE", Path.home() / ".cache" / "insien-k8s"))
MANIFESTS = ROOT / "deploy" / "kubernetes" / "insien.yaml"
PATCH = Path(__file__).parent / "test-cluster-patch.yaml"


def kubectl(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        [str(CACHE / "bin" / "kubectl"), "--kubeconfig", str(RUN / "admin.kubeconfig"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def deployed() -> Iterator[str]:
    key = secrets.token_urlsafe(24)
    kubectl("apply", "-f", str(MANIFESTS))
    kubectl(
        "-n",
        "insien",
        "create",
        "secret",
        "generic",
        "insien-secrets",
        f"--from-literal=api-key={key}",
        f"--from-literal=secret-key={secrets.token_hex(32)}",
    )
    kubectl("-n", "insien", "patch", "deployment", "insien", "--patch-file", str(PATCH))
    try:
        kubectl("-n", "insien", "rollout", "status", "deployment/insien", "--timeout=120s")
        yield key
    finally:
        kubectl("delete", "-f", str(MANIFESTS), "--wait=true", "--timeout=120s", check=False)


def test_the_manifests_serve_a_sandbox(deployed: str) -> None:
    url = "http://127.0.0.1:3000"  # the server pod shares the node's network namespace
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, kubectl("-n", "insien", "logs", "deployment/insien")
        time.sleep(0.5)
    with Sandbox(api_key=deployed, base_url=url) as box:
        assert box.commands.run("echo hi from the cluster").stdout == "hi from the cluster\n"
        pods = kubectl(
            "-n", "insien", "get", "pods", "-l", f"insien.sandbox.id={box.sandbox_id}", "-o", "name"
        )
        assert pods.strip() == f"pod/insien-{box.sandbox_id}"
    # The server runs as its own service account, which may do no more than its Role says.
    account = "system:serviceaccount:insien:insien-server"
    for verb, resource, subresource, allowed in (
        ("create", "pods", "", "yes"),
        ("create", "pods", "attach", "yes"),
        ("get", "pods", "log", "yes"),
        ("create", "pods", "exec", "no"),  # `pods/exec` would name a pod: --subresource
        ("create", "configmaps", "", "no"),  # the agent arrives on the pod's stdin
        ("get", "secrets", "", "no"),
        ("create", "deployments", "", "no"),
    ):
        answer = kubectl(
            "auth", "can-i", verb, resource, f"--subresource={subresource}", "-n", "insien",
            "--as", account, check=False,
        )  # fmt: skip
        assert (verb, resource, subresource, answer.strip()) == (
            verb,
            resource,
            subresource,
            allowed,
        )
