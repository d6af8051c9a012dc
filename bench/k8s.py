"""`nox -s k8s-bench [-- --quick]`: Insien on the Kubernetes runtime against Kubernetes' own way
of running a command in a fresh pod, on the test cluster (tests/k8s/cluster.sh), in one run.

- create -> first command: an Insien sandbox (cold: a pod made for it; pooled: a pod from the
  warm pool) against creating a pod through the API server, waiting until it runs and
  `exec`ing `true` in it (what `kubectl run` + `kubectl exec` do);
- command round trip on a running sandbox: Insien's `run_command("true")` (over the pod's
  attach stream, already open) against an `exec` of `true` through the API server (a new
  stream to the kubelet and a new process in the container each time).

Runs inside the cluster's network namespace; prints a table and writes bench/results/k8s.json,
bench/results/k8s.md and the results block of docs/kubernetes.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from httpx_ws import AsyncWebSocketSession, HTTPXWSException, WebSocketDisconnect, aconnect_ws

from bench.stats import summarize
from insien.runtime.kubernetes.client import KubeClient
from insien_sandbox import AsyncSandbox
from tests.backends import K8S_RUN, KUBERNETES
from tests.server_process import IMAGE, Server, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "kubernetes.md"
START = "<!-- k8s-results:start -->"
END = "<!-- k8s-results:end -->"
POOL = 2
COLD = {"memory": "512m"}
"""Resources no pool has: a create with them makes its pod then."""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def pool_ready(server: Server, size: int) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        with trio.fail_after(120):
            while (await client.get("/health")).json().get("pool", 0) < size:  # noqa: ASYNC110
                await trio.sleep(0.1)


@asynccontextmanager
async def sandbox(server: Server, **options: Any) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url, **options) as box:
        yield box


async def insien_first_command(server: Server, n: int, **options: Any) -> list[float]:
    samples: list[float] = []
    for _ in range(n):
        await pool_ready(server, POOL)  # no refill competing with the sample
        start = time.perf_counter()
        async with sandbox(server, **options) as box:
            await box.commands.run("true")  # the create happens on first use
            samples.append(_ms(start))
    return samples


async def insien_round_trips(server: Server, n: int) -> list[float]:
    samples: list[float] = []
    async with sandbox(server) as box:
        await box.commands.run("true")
        for _ in range(n):
            start = time.perf_counter()
            await box.commands.run("true")
            samples.append(_ms(start))
    return samples


def plain_pod(name: str) -> dict[str, Any]:
    """What `kubectl run --image=… -- sleep infinity` makes, on the test cluster's terms."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"insien.bench": "k8s"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": "c",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "infinity"],
                }
            ],
        },
    }


async def running(kube: KubeClient, name: str) -> None:
    with trio.fail_after(120):
        while True:
            pod = await kube.request("GET", kube.path("pods", name))
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if statuses and "running" in (statuses[0].get("state") or {}):
                return
            await trio.sleep(0.05)


async def kube_exec(kube: KubeClient, name: str) -> None:
    """`kubectl exec <pod> -- true`: a stream through the API server until the status."""
    url = f"{kube.path('pods', name)}/exec?container=c&command=true&stdout=true&stderr=true"
    session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
        url, kube.http, subprotocols=["v4.channel.k8s.io"]
    )
    async with session as ws:
        while True:
            try:
                message = await ws.receive_bytes()
            except WebSocketDisconnect:
                return
            if message[:1] == b"\x03":
                status = json.loads(message[1:] or b"{}")
                if status.get("status") != "Success":
                    raise RuntimeError(f"exec failed: {status}")
                return


async def exec_when_running(kube: KubeClient, name: str) -> None:
    """The fastest a client can: `exec` at once, again every 50 ms until the container runs
    (as Insien attaches; the pod's status says Running up to a second late)."""
    with trio.fail_after(120):
        while True:
            try:
                await kube_exec(kube, name)
                return
            except (HTTPXWSException, httpx.HTTPError):
                await trio.sleep(0.05)


async def kube_first_command(kube: KubeClient, n: int) -> list[float]:
    samples: list[float] = []
    for index in range(n):
        name = f"bench-{secrets.token_hex(3)}-{index}"
        start = time.perf_counter()
        await kube.request("POST", kube.path("pods"), json=plain_pod(name))
        try:
            await exec_when_running(kube, name)
            samples.append(_ms(start))
        finally:
            await kube.request(
                "DELETE", kube.path("pods", name), params={"gracePeriodSeconds": "0"}
            )
    return samples


async def kube_round_trips(kube: KubeClient, n: int) -> list[float]:
    name = f"bench-{secrets.token_hex(3)}-exec"
    await kube.request("POST", kube.path("pods"), json=plain_pod(name))
    samples: list[float] = []
    try:
        await running(kube, name)
        await kube_exec(kube, name)
        for _ in range(n):
            start = time.perf_counter()
            await kube_exec(kube, name)
            samples.append(_ms(start))
    finally:
        await kube.request("DELETE", kube.path("pods", name), params={"gracePeriodSeconds": "0"})
    return samples


async def measure(server: Server, quick: bool) -> dict[str, Any]:
    n_first, n_trips, n_exec = (3, 100, 20) if quick else (10, 500, 100)
    kube = KubeClient.from_config(K8S_RUN / "admin.kubeconfig", "default")
    try:
        print("-- create -> first command", file=sys.stderr, flush=True)
        cold = await insien_first_command(server, n_first, resources=COLD)
        pooled = await insien_first_command(server, n_first)
        pod_exec = await kube_first_command(kube, n_first)
        print("-- command round trip", file=sys.stderr, flush=True)
        trips = await insien_round_trips(server, n_trips)
        execs = await kube_round_trips(kube, n_exec)
    finally:
        await kube.aclose()
    return {
        "first_command": {
            "insien_cold": summarize(cold),
            "insien_pool": summarize(pooled),
            "pod_create_exec": summarize(pod_exec),
        },
        "round_trip": {"insien": summarize(trips), "kube_exec": summarize(execs)},
    }


def table(results: dict[str, Any]) -> str:
    first, trip = results["first_command"], results["round_trip"]
    base_first = first["pod_create_exec"]["median_ms"]
    base_trip = trip["kube_exec"]["median_ms"]
    first_label = "create -> first command"
    rows = [
        (f"{first_label}, Insien cold (a pod made for it)", first["insien_cold"], base_first),
        (f"{first_label}, Insien from the warm pool", first["insien_pool"], base_first),
        (
            f"{first_label}, pod create + exec via the API server",
            first["pod_create_exec"],
            base_first,
        ),
        ("command round trip, Insien (attach stream open)", trip["insien"], base_trip),
        ("command round trip, exec via the API server", trip["kube_exec"], base_trip),
    ]
    machine = results["machine"]
    lines = [
        f"Measured {machine['date']} on {machine['cpus']} CPUs, Kubernetes {machine['kubernetes']}"
        f" (the test cluster: dockershim, one node){' — quick run' if results['quick'] else ''}.",
        "",
        "| what | n | p50 ms | p95 ms | vs Kubernetes' own |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, summary, base in rows:
        ratio = summary["median_ms"] / base if base else float("nan")
        lines.append(
            f"| {label} | {summary['n']} | {summary['median_ms']:.1f} | "
            f"{summary['p95_ms']:.1f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


async def kubernetes_version() -> str:
    kube = KubeClient.from_config(K8S_RUN / "admin.kubeconfig", "default")
    try:
        version = await kube.request("GET", "/version")
    finally:
        await kube.aclose()
    return str(version.get("gitVersion", "?"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small samples: about a minute")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/kubernetes.md")
    args = parser.parse_args(argv)
    process, server = start_server(
        f"bench-k8s-{secrets.token_hex(3)}",
        {**KUBERNETES, "INSIEN_POOL_SIZE": str(POOL), "INSIEN_POOL_MAX": str(POOL)},
    )
    try:
        results = trio.run(measure, server, args.quick)
    finally:
        assert stop_server(process) == 0, server.log()[-3000:]
    results["quick"] = args.quick
    results["machine"] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "kubernetes": trio.run(kubernetes_version),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "k8s.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (RESULTS / "k8s.md").write_text(text + "\n")
    if not args.no_doc:
        doc = DOC.read_text()
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
