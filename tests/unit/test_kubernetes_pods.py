"""How the Kubernetes runtime reads a pod's status (what ended a sandbox) and writes its limits
(pure mapping, on pod shapes as the API server returns them), and its bootstrap, the program a
pod runs until the agent arrives on its stdin. The runtime against a real cluster is proven in
tests/k8s."""

from __future__ import annotations

import stat
import subprocess
import sys
import zipapp
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing

from insien.runtime.base import ContainerSpec, RuntimeFailure
from insien.runtime.kubernetes import runtime as runtime_module
from insien.runtime.kubernetes.client import KubeClient
from insien.runtime.kubernetes.runtime import (
    ATTACH_RETRY,
    BOOTSTRAP,
    RUNNING_ATTACH_GRACE,
    KubernetesRuntime,
    _quantity,
    boot_message,
    bootstrap,
    container_info,
)


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


def make_zipapp(folder: Path) -> bytes:
    source = folder / "src"
    source.mkdir()
    (source / "__main__.py").write_text("import os, sys\nprint('agent ran as', sys.argv[0])\n")
    zipapp.create_archive(source, folder / "app.pyz")
    return (folder / "app.pyz").read_bytes()


def boot(folder: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    volume = folder / "volume"
    volume.mkdir(mode=0o777, exist_ok=True)
    program = bootstrap(str(volume), str(volume / "agent.pyz"))
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", program], input=stdin, capture_output=True, timeout=30
    )


def test_the_bootstrap_becomes_the_agent_it_is_sent(tmp_path: Path) -> None:
    agent = make_zipapp(tmp_path)
    done = boot(tmp_path, boot_message(agent))
    path = tmp_path / "volume" / "agent.pyz"
    assert done.stdout.decode() == f"agent ran as {path}\n", done.stderr
    assert path.read_bytes() == agent
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # no longer the volume's 0777


def test_the_bootstrap_runs_nothing_it_cannot_verify(tmp_path: Path) -> None:
    """A damaged agent, a stream that is not an agent (a restarted server's `resume` sent to a
    pod whose agent never arrived) and a closed stdin all end the pod without running code."""
    agent = make_zipapp(tmp_path)
    message = boot_message(agent)
    damaged = message[:-1] + bytes([message[-1] ^ 1])
    for stdin in (damaged, b'{"type": "resume"}\n', message[:100], b""):
        done = boot(tmp_path, stdin)
        assert done.returncode != 0
        assert b"agent ran" not in done.stdout
        assert not (tmp_path / "volume" / "agent.pyz").exists()


def test_the_pod_a_sandbox_becomes() -> None:
    """What a create asks the API server for: the bootstrap as the command, the limits, the
    template's runtime class, and nothing a sandbox could use against its node."""
    runtime = KubernetesRuntime(
        cast(KubeClient, None), cast(trio.Nursery, None), host_network=False, pull_policy="Always"
    )
    spec = ContainerSpec(
        sandbox_id="abc",
        image="registry.example/sandbox:1",
        labels={"insien.instance": "one", "insien.owner": "t"},
        python="/usr/bin/python3",
        capabilities=("SETUID", "SETGID"),
        runtime="gvisor",
        mem_limit=256 << 20,
        nano_cpus=500_000_000,
        disk_limit="2g",
        tmp_size="64m",
    )
    pod = runtime._pod(spec, "insien-abc")
    assert pod["metadata"]["labels"] == {"insien.instance": "one", "insien.sandbox.id": "abc"}
    assert pod["metadata"]["annotations"]["insien.owner"] == "t"
    body = pod["spec"]
    assert body["runtimeClassName"] == "gvisor"
    assert (body["automountServiceAccountToken"], body["hostNetwork"]) == (False, False)
    assert body["restartPolicy"] == "Never"
    (container,) = body["containers"]
    assert container["command"] == ["/usr/bin/python3", "-I", "-S", "-c", BOOTSTRAP]
    assert (container["stdin"], container["stdinOnce"], container["tty"]) == (True, False, False)
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"] == {
        "memory": str(256 << 20),
        "cpu": "500m",
        "ephemeral-storage": "2Gi",
    }
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    assert security["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in body["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert volumes["agent"]["emptyDir"]["medium"] == "Memory"


class _Refusals:
    """A `run_channel` stand-in refusing the first `times` attaches, then handing out a
    channel; and a pod that the API server says runs."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.tries = 0

    async def run_channel(
        self, http: object, path: str, *, task_status: trio.TaskStatus[object]
    ) -> None:
        self.tries += 1
        if self.tries <= self.times:
            raise RuntimeFailure("attach refused: <Response [500 Internal Server Error]>")
        task_status.started(object())

    async def started(self, container_id: str) -> bool:
        return True


async def _attach_with(refusals: _Refusals, monkeypatch: pytest.MonkeyPatch) -> object:
    """What `attach` returns, or the error it raises."""
    monkeypatch.setattr(runtime_module, "run_channel", refusals.run_channel)
    client = KubeClient(httpx.AsyncClient(base_url="https://kube.invalid"), "ns")
    async with trio.open_nursery() as nursery:
        runtime = KubernetesRuntime(client, nursery, host_network=False, pull_policy="Never")
        monkeypatch.setattr(runtime, "_started", refusals.started)
        try:
            return await runtime.attach("pod-1")
        except RuntimeFailure as exc:
            return exc


async def test_a_running_pod_refusing_an_attach_for_a_moment_is_attached(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # The kubelet answers 500 for a moment after the API server says the pod runs (seen in a
    # burst of creates): that is retried, not the create's failure.
    refusals = _Refusals(times=10)
    assert not isinstance(await _attach_with(refusals, monkeypatch), RuntimeFailure)
    assert refusals.tries == 11


async def test_a_running_pod_that_keeps_refusing_is_an_answer(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    refusals = _Refusals(times=10_000)
    answer = await _attach_with(refusals, monkeypatch)
    assert isinstance(answer, RuntimeFailure)
    assert "attach refused" in str(answer)
    grace_tries = RUNNING_ATTACH_GRACE / ATTACH_RETRY
    assert grace_tries < refusals.tries < grace_tries + 5
