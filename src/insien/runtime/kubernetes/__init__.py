"""Kubernetes as a `Runtime`: a pod per sandbox, driven over the API server (`client`) and the
pod `attach` subresource (`attach`), the agent delivered by a ConfigMap (`runtime`)."""

from __future__ import annotations

from .runtime import KubernetesRuntime as KubernetesRuntime

__all__ = ["KubernetesRuntime"]
