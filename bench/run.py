"""`nox -s bench [-- --quick]`: run every scenario against a real `insien serve` on this machine."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import secrets
import sys
from pathlib import Path
from typing import Any

import docker
import trio

from bench import report, scenarios
from insien.tooling.images import build_image
from tests.server_process import IMAGE, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

SIZES = {
    # scenario: (quick, full) parameters
    "command_round_trip": ({"n": 200, "n_docker": 30}, {"n": 1000, "n_docker": 100}),
    "time_to_first_command": ({"n": 3}, {"n": 10}),
    "throughput": (
        {"sandboxes": 5, "concurrency": 4, "per_worker": 5},
        {"sandboxes": 50, "concurrency": 20, "per_worker": 5},
    ),
    "output_streaming": ({"size": 64 * scenarios.MIB}, {"size": 1024 * scenarios.MIB}),
    "files": ({"size": 16 * scenarios.MIB}, {"size": 100 * scenarios.MIB}),
    "burst": ({"n": 6}, {"n": 30}),
    "e2b_first_command": ({"n": 3}, {"n": 10}),
    "ports": ({"size": 16 * scenarios.MIB, "n": 100}, {"size": 100 * scenarios.MIB, "n": 500}),
    "egress": ({"size": 16 * scenarios.MIB}, {"size": 100 * scenarios.MIB}),
    "code_interpreter": ({"n": 100, "n_first": 5}, {"n": 500, "n_first": 20}),
    "scale": ({"limit": 10, "seconds": 60}, {"limit": 500, "seconds": 900}),
}


def machine(client: docker.DockerClient) -> dict[str, Any]:
    import os

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "docker": client.version().get("Version"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


async def run_all(context: scenarios.Context, chosen: list[str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in chosen:
        params = SIZES[name][0 if quick else 1]
        print(f"-- {name} {params}", file=sys.stderr, flush=True)
        results[name] = await getattr(scenarios, name)(context, **params)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a minute or two")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=list(SIZES),
        help="run just these scenarios, updating them in the latest results of the same size",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    chosen = args.only or list(SIZES)

    client = docker.from_env()
    build_image(client, tag=IMAGE)
    process, server = start_server(
        f"bench-{secrets.token_hex(3)}",
        {
            "INSIEN_POOL_SIZE": str(scenarios.POOL_SIZE),
            "INSIEN_POOL_MAX": str(scenarios.POOL_MAX),
            "INSIEN_MAX_SANDBOXES": "none",
            # The egress scenario's upstream is on the host's bridge address, not public.
            "INSIEN_EGRESS_ALLOW": f"public,{scenarios.bridge_gateway(client)}",
        },
    )
    try:
        context = scenarios.Context(server=server, docker=client, image=IMAGE)
        results = trio.run(run_all, context, chosen, args.quick)
    finally:
        stop_server(process)
        leftovers = client.containers.list(all=True, filters={"label": "insien.bench"})
        for container in leftovers:
            container.remove(force=True)
    latest = RESULTS / "latest.json"
    if args.only and latest.exists():
        # A partial run updates its scenarios in the latest full set rather than replacing it.
        previous = json.loads(latest.read_text())
        if previous.get("quick") == args.quick:
            results = {**previous, **results}
    results["quick"] = args.quick
    results["machine"] = machine(client)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if report.chart(results, RESULTS / "latency.png"):
        results["chart"] = "../bench/results/latency.png"
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    table = report.markdown(results)
    (RESULTS / "latest.md").write_text(table + "\n")
    if not args.no_doc:
        report.update_doc(DOC, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
