"""`python -m bench.k8s_any_image [--n N]` (inside the test cluster's namespace, `nox -s
k8s-bench`): what bringing the agent's runtime to pods costs (issue 31). Cold create -> first
command on the default image, alternating: the runtime sent down the attach stream with the
agent (17 MB; the default), staged on the node and mounted read-only
(INSIEN_K8S_AGENT_RUNTIME_DIR), and the image's own python3 (a template naming it: no runtime
brought, as before). Writes bench/results/k8s_any_image.json and prints it."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.report import save
from insien.runtime import agent_runtime
from insien.runtime.kubernetes.stage import stage
from insien_sandbox import AsyncSandbox
from tests.backends import KUBERNETES
from tests.server_process import IMAGE, Server, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "k8s_any_image.json"
IMAGE_PYTHON = {IMAGE: {"python": "/usr/bin/python3.11"}}


async def first_commands(server: Server, n: int) -> list[float]:
    taken = []
    for _ in range(n):
        async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
            start = time.perf_counter()
            await box.run_command("true")  # creates the sandbox on first use
            taken.append((time.perf_counter() - start) * 1000)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10, help="creates of each variant")
    args = parser.parse_args(argv)
    made = agent_runtime.bundle()
    assert made is not None
    root = Path(tempfile.mkdtemp(prefix="insien-bench-runtime-"))
    root.chmod(0o755)
    stage(root, made)
    pools = {"INSIEN_POOL_SIZE": "0", "INSIEN_POOL_MAX": "0"}
    variants = {
        "runtime_sent_with_the_agent": {},
        "runtime_staged_on_the_node": {"INSIEN_K8S_AGENT_RUNTIME_DIR": str(root)},
        "image_python": {"INSIEN_TEMPLATE_SETTINGS": json.dumps(IMAGE_PYTHON)},
    }
    taken: dict[str, list[float]] = {}
    try:
        for name, extra in variants.items():
            process, server = start_server(
                f"bench-k8s-any-{secrets.token_hex(3)}", {**KUBERNETES, **pools, **extra}
            )
            try:
                trio.run(first_commands, server, 1)  # warm: the image's files in the cache
                taken[name] = trio.run(first_commands, server, args.n)
            finally:
                stop_server(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results: dict[str, Any] = {
        "cold_first_command_ms_p50": {k: statistics.median(v) for k, v in taken.items()},
        "cold_first_command_ms_min": {k: min(v) for k, v in taken.items()},
        "runtime_tar_mib": len(agent_runtime.archive(made.files)) / 2**20,
        "samples": taken,
    }
    save(results, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
