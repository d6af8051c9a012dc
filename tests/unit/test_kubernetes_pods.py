"""How the Kubernetes runtime reads a pod's status (what ended a sandbox) and writes its limits:
pure mapping, on pod shapes as the API server returns them. The runtime's behaviour against a
real cluster is proven in tests/k8s."""

from __future__ import annotations

from typing import Any

from insien.runtime.kubernetes.runtime import _quantity, container_info


def pod(status: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"insien.owner": "t", "other": "x"}, **metadata},
        "spec": {"containers": [{"resources": {"limits": {"memory": "268435456"}}}]},
        "status": status,
    }


def test_a_running_pod() -> None:
    info = container_info(
        "p", pod({"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]})
    )
    assert (info.running, info.gone, info.oom_killed, info.evicted) == (True, False, False, False)
    assert info.labels == {"insien.owner": "t"}
    assert info.memory == 268435456


def test_an_agent_killed_for_memory_is_oom_not_gone() -> None:
    """restartPolicy Never: the pod is Failed, its container terminated as OOMKilled."""
    info = container_info(
        "p",
        pod(
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ],
            }
        ),
    )
    assert (info.running, info.gone, info.oom_killed) == (False, False, True)


def test_an_evicted_pod_and_a_lost_node() -> None:
    evicted = container_info(
        "p", pod({"phase": "Failed", "reason": "Evicted", "message": "ephemeral"})
    )
    assert (evicted.evicted, evicted.gone, evicted.running) == (True, True, False)
    lost = container_info("p", pod({"phase": "Running", "reason": "NodeLost"}))
    assert (lost.evicted, lost.gone) == (False, True)


def test_a_pod_being_deleted_is_gone() -> None:
    info = container_info(
        "p",
        pod(
            {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]},
            deletionTimestamp="x",
        ),
    )
    assert info.gone is True


def test_quantities() -> None:
    assert [_quantity(x) for x in ("256m", "1g", "512k", "100", "1.5Gi")] == [
        "256Mi",
        "1Gi",
        "512Ki",
        "100",
        "1.5Gi",
    ]
