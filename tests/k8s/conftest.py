"""The Kubernetes suite runs inside the namespace tests/k8s/cluster.sh makes (`nox -s k8s`),
against its API server on 127.0.0.1:6443 with its admin kubeconfig."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

RUN = Path(os.environ.get("INSIEN_K8S_RUN", "/tmp/insien-k8s"))


@pytest.fixture(scope="session")
def kubeconfig() -> dict[str, str]:
    """The admin's server, CA file and token, as the harness wrote them beside its
    kubeconfig."""
    path = RUN / "admin.json"
    if not path.is_file():
        pytest.fail("no cluster: run `tests/k8s/cluster.sh up` (nox -s k8s does)")
    found: dict[str, str] = json.loads(path.read_text())
    return found


@pytest.fixture
async def api(kubeconfig: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=kubeconfig["ca"])
    async with httpx.AsyncClient(
        base_url=kubeconfig["server"],
        headers={"Authorization": f"Bearer {kubeconfig['token']}"},
        verify=context,
        timeout=30,
        trust_env=False,
    ) as client:
        yield client
