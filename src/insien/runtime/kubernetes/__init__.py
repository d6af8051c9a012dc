"""Kubernetes as a `Runtime`: a pod per sandbox, driven over the API server (`client`) and the
pod `attach` subresource (`attach`), the agent sent down that stream to a bootstrap (`runtime`)."""

from __future__ import annotations

from .runtime import KubernetesRuntime as KubernetesRuntime

__all__ = ["KubernetesRuntime"]
