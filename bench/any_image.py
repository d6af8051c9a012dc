"""`python -m bench.any_image [--n N]`: what the runtime Insien brings costs (issue 31).

One server, two templates of the same Debian image: the default (the agent runs on the
runtime in the agent volume, through its own loader) and a tag of it whose template names
the image's python3 (`"python": "/usr/bin/python3.11"`: the agent runs on that, as before).
Measured, alternating between the two: cold create -> first command (no warm pool), the host
memory (PSS) of an idle sandbox's processes, and the agent volume's size. Prints JSON and
writes bench/results/any_image.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import docker
import trio

from bench.report import save
from insien._resources import agent_zipapp
from insien.runtime.agent_runtime import bundle
from insien.runtime.docker import agent_volume
from insien.tooling.images import build_image
from insien_sandbox import AsyncSandbox
from tests.server_process import IMAGE, Server, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "any_image.json"
IMAGE_PYTHON = "insien-sandbox:bench-image-python"
VARIANTS = {"brought_runtime": IMAGE, "image_python": IMAGE_PYTHON}


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def sandbox_pss_mib(client: docker.DockerClient, sandbox_id: str) -> float:
    """PSS of every process of the sandbox's container (docker-init, agent, helper), in MiB."""
    (found,) = client.api.containers(filters={"label": f"insien.sandbox.id={sandbox_id}"})
    top = client.api.top(found["Id"], ps_args="-o pid")
    return sum(_pss_kib(int(row[0])) for row in top["Processes"]) / 1024


async def measure(server: Server, client: docker.DockerClient, n: int) -> dict[str, Any]:
    first: dict[str, list[float]] = {name: [] for name in VARIANTS}
    memory: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(n):
        for name, template in VARIANTS.items():
            async with AsyncSandbox(
                api_key=server.api_key, base_url=server.url, template=template
            ) as box:
                start = time.perf_counter()
                await box.run_command("true")  # creates the sandbox on first use
                first[name].append((time.perf_counter() - start) * 1000)
                await trio.sleep(2)  # idle: the hello, the first command and its GC are over
                memory[name].append(sandbox_pss_mib(client, str(box.sandbox_id)))
    made = bundle()
    return {
        "cold_first_command_ms_p50": {k: statistics.median(v) for k, v in first.items()},
        "cold_first_command_ms_min": {k: min(v) for k, v in first.items()},
        "idle_sandbox_pss_mib_p50": {k: statistics.median(v) for k, v in memory.items()},
        "agent_volume_mib": sum(len(c) for c, _ in agent_volume.contents(agent_zipapp()).values())
        / 2**20,
        "runtime_files": len(made.files) if made else 0,
        "samples": {"first_command_ms": first, "pss_mib": memory},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10, help="samples of each variant")
    args = parser.parse_args(argv)
    client = docker.from_env()
    build_image(client, tag=IMAGE)
    repository, _, tag = IMAGE_PYTHON.partition(":")
    client.images.get(IMAGE).tag(repository, tag)
    settings = {IMAGE_PYTHON: {"python": "/usr/bin/python3.11"}}
    process, server = start_server(
        f"bench-any-{secrets.token_hex(3)}",
        {
            "INSIEN_POOL_SIZE": "0",
            "INSIEN_POOL_MAX": "0",
            "INSIEN_TEMPLATE_SETTINGS": json.dumps(settings),
        },
    )
    try:
        results = trio.run(measure, server, client, args.n)
    finally:
        stop_server(process)
        client.images.remove(IMAGE_PYTHON)
    save(results, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
