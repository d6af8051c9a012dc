"""Where test servers run their sandboxes: Docker (the default), Docker with every sandbox
under gVisor (`INSIEN_TEST_BACKEND=gvisor`, `nox -s gvisor`), or the Kubernetes cluster
tests/k8s/cluster.sh runs (`INSIEN_TEST_BACKEND=kubernetes`, inside its network namespace).

`nox -s k8s` runs backend-neutral suites of tests/e2e and tests/attacks again on pods, to prove
the same behaviours there; a test of something Kubernetes does not offer says so with
`docker_only`, and the reason is what docs/kubernetes.md lists as a difference.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

K8S_RUN = Path(os.environ.get("INSIEN_K8S_RUN", "/tmp/insien-k8s"))
KUBERNETES = {
    "INSIEN_RUNTIME_BACKEND": "kubernetes",
    "INSIEN_K8S_KUBECONFIG": str(K8S_RUN / "admin.kubeconfig"),
    "INSIEN_K8S_NAMESPACE": "default",
    "INSIEN_K8S_HOST_NETWORK": "true",
    "INSIEN_K8S_IMAGE_PULL_POLICY": "Never",
}
GVISOR = {"INSIEN_RUNTIME": "runsc"}
"""Every sandbox of a test server under runsc (registered with dockerd, as .ci/run does)."""
BACKENDS: dict[str, dict[str, str]] = {"docker": {}, "gvisor": GVISOR, "kubernetes": KUBERNETES}
BACKEND = os.environ.get("INSIEN_TEST_BACKEND", "docker")
if BACKEND not in BACKENDS:
    raise ValueError(f"INSIEN_TEST_BACKEND must be one of {sorted(BACKENDS)}, not {BACKEND!r}")


def docker_only(reason: str) -> pytest.MarkDecorator:
    """Skip on Kubernetes, saying what it lacks."""
    return pytest.mark.skipif(BACKEND == "kubernetes", reason=f"on Kubernetes: {reason}")


def runc_only(reason: str) -> pytest.MarkDecorator:
    """Skip on the gVisor backend, saying what gVisor does differently (docs/gvisor.md)."""
    return pytest.mark.skipif(BACKEND == "gvisor", reason=f"under gVisor: {reason}")
