"""A small Kubernetes API client over httpx (trio through anyio): a kubeconfig's current
context or the in-cluster service account, bearer tokens or client certificates. Only what the
runtime calls; JSON in and out."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..base import RuntimeFailure

IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(RuntimeFailure):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


def _data_file(entry: dict[str, Any], key: str, folder: Path) -> str | None:
    """`key` as a path, or `key-data` (base64) written to a private file."""
    if entry.get(key):
        return str(entry[key])
    data = entry.get(f"{key}-data")
    if not data:
        return None
    path = folder / key
    path.write_bytes(base64.b64decode(data))
    path.chmod(0o600)
    return str(path)


class KubeClient:
    def __init__(self, http: httpx.AsyncClient, namespace: str) -> None:
        self.http = http
        self.namespace = namespace

    @classmethod
    def from_config(cls, kubeconfig: Path | None, namespace: str | None) -> KubeClient:
        """The kubeconfig's current context (`kubeconfig`, else $KUBECONFIG), or the
        in-cluster service account when there is neither."""
        path = kubeconfig or (
            Path(os.environ["KUBECONFIG"]) if "KUBECONFIG" in os.environ else None
        )
        headers: dict[str, str] = {}
        if path is None and (IN_CLUSTER / "token").is_file():
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            server = f"https://{host}:{port}"
            context = ssl.create_default_context(cafile=str(IN_CLUSTER / "ca.crt"))
            headers["Authorization"] = f"Bearer {(IN_CLUSTER / 'token').read_text().strip()}"
            default_namespace = (IN_CLUSTER / "namespace").read_text().strip()
        elif path is not None:
            config = yaml.safe_load(path.read_text())
            current = config.get("current-context")
            found = next(c for c in config["contexts"] if c["name"] == current)["context"]
            cluster = next(c for c in config["clusters"] if c["name"] == found["cluster"])
            user = next(u for u in config["users"] if u["name"] == found["user"])["user"]
            folder = Path(tempfile.mkdtemp(prefix="insien-kube-"))
            server = cluster["cluster"]["server"]
            ca = _data_file(cluster["cluster"], "certificate-authority", folder)
            context = ssl.create_default_context(cafile=ca)
            cert = _data_file(user, "client-certificate", folder)
            key = _data_file(user, "client-key", folder)
            if cert and key:
                context.load_cert_chain(cert, key)
            if user.get("token"):
                headers["Authorization"] = f"Bearer {user['token']}"
            default_namespace = found.get("namespace", "default")
        else:
            raise RuntimeFailure(
                "no kubeconfig (INSIEN_K8S_KUBECONFIG, KUBECONFIG) and not in a pod"
            )
        http = httpx.AsyncClient(
            base_url=server, headers=headers, verify=context, timeout=30, trust_env=False
        )
        return cls(http, namespace or default_namespace)

    def path(self, kind: str, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self.namespace}/{kind}"
        return f"{base}/{name}" if name else base

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RuntimeFailure(f"Kubernetes API unreachable: {type(exc).__name__}") from exc
        if answer.status_code >= 400:
            try:
                message = str(answer.json().get("message", answer.text))
            except ValueError:
                message = answer.text[:500]
            raise KubeError(answer.status_code, message)
        return answer.json() if answer.content else None

    async def aclose(self) -> None:
        await self.http.aclose()
