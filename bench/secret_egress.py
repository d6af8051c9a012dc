"""`python -m bench.secret_egress [--n N] [--size MIB]`: what a secret binding costs (issue 30).

One server, one sandbox, one HTTPS upstream on 127.0.0.2 (a test certificate the server trusts
through INSIEN_EGRESS_CA_FILE), served on two ports: requests to one port carry a secret
(`Authorization: Bearer {secret}`), so the server terminates the sandbox's TLS with its egress
CA, adds the header and forwards over a second, verified TLS connection; requests to the other
port have no binding and go through the plain `CONNECT` tunnel, the sandbox's TLS end to end
(it trusts the upstream's certificate directly). Measured inside the sandbox, alternating
between the two in rounds: the time of one HTTPS GET of a small file (Python's urllib, a new
connection each, as the proxy closes an injected request's connection), and curl's rate for
a large download. Prints JSON and writes bench/results/secret_egress.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker
import trio

from bench.report import save
from insien.tooling.images import build_image
from insien_sandbox import AsyncSandbox, AsyncSecrets, SecretBinding
from tests.e2e.upstreams import tls_context, upstream
from tests.server_process import IMAGE, Server, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "secret_egress.json"
HOST = "api.test"
ADDRESS = "127.0.0.2"
ROUNDS = 4
"""The request samples of each path come in this many alternating rounds (noise spreads evenly)."""
DOWNLOADS = 3
SECRET = "BENCH_TOKEN"
UPSTREAM_CERT = "/tmp/upstream.pem"

TIMED_GETS = """
import json, ssl, sys, time, urllib.request
url, n, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
context = ssl.create_default_context(cafile=cafile)
urllib.request.urlopen(url, context=context).read()  # warm: imports, DNS, the CA's leaf
times = []
for _ in range(n):
    start = time.perf_counter()
    with urllib.request.urlopen(url, context=context) as answer:
        answer.read()
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""
"""Runs in the sandbox: n GETs of `url` through its HTTPS_PROXY, each timed (ms)."""


async def measure(
    server: Server, injected_port: int, tunnel_port: int, cert: str, n: int, size: int
) -> dict[str, Any]:
    value = f"bench-{secrets.token_hex(16)}"
    await AsyncSecrets(server.api_key, server.url).create(SECRET, value)
    binding = SecretBinding(
        SECRET, [f"{HOST}:{injected_port}"], header="Authorization: Bearer {secret}"
    )
    paths = {
        "injecting": (injected_port, ""),  # trusts the egress CA (SSL_CERT_FILE, CURL_CA_BUNDLE)
        "tunnel": (tunnel_port, UPSTREAM_CERT),  # trusts the upstream itself, end to end
    }
    request_ms: dict[str, list[float]] = {name: [] for name in paths}
    download: dict[str, list[float]] = {name: [] for name in paths}
    async with AsyncSandbox(
        api_key=server.api_key, base_url=server.url, allow_out=[HOST], secrets=[binding]
    ) as box:
        await box.files.write(UPSTREAM_CERT, cert)
        await box.files.write("/tmp/gets.py", TIMED_GETS)
        per_round = max(1, n // ROUNDS)
        for _ in range(ROUNDS):
            for name, (port, cafile) in paths.items():
                url = f"https://{HOST}:{port}/small.txt"
                args = " ".join(shlex.quote(a) for a in (url, str(per_round), cafile))
                done = await box.commands.run(f"python3 /tmp/gets.py {args}", timeout=600)
                assert done.exit_code == 0, f"{name}: {done.stderr}"
                request_ms[name].extend(json.loads(done.stdout))
        for _ in range(DOWNLOADS):
            for name, (port, cafile) in paths.items():
                trust = f"--cacert {cafile}" if cafile else ""
                curl = (
                    f"curl -sS -f {trust} -o /dev/null -w '%{{speed_download}}'"
                    f" https://{HOST}:{port}/big.bin"
                )
                done = await box.commands.run(curl, timeout=600)
                assert done.exit_code == 0, f"{name}: {done.stderr}"
                download[name].append(float(done.stdout) / 2**20)
        used = (await box.network.get()).secrets_used
    # Every request on the injecting port carried the secret (one warm-up per round, plus
    # the downloads); none on the tunnel could have.
    assert used == ROUNDS * (per_round + 1) + DOWNLOADS, used
    p50 = {name: statistics.median(v) for name, v in request_ms.items()}
    rate = {name: statistics.median(v) for name, v in download.items()}
    return {
        "requests_per_path": ROUNDS * per_round,
        "request_ms_p50": p50,
        "request_ms_p95": {
            name: sorted(v)[round(0.95 * (len(v) - 1))] for name, v in request_ms.items()
        },
        "request_p50_ratio": p50["injecting"] / p50["tunnel"],
        "download_mib": size,
        "download_mb_s_median": rate,
        "download_ratio": rate["injecting"] / rate["tunnel"],
        "secrets_used": used,
        "samples": {"request_ms": request_ms, "download_mb_s": download},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="timed requests per path")
    parser.add_argument("--size", type=int, default=100, help="the download, in MiB")
    args = parser.parse_args(argv)
    build_image(docker.from_env(), tag=IMAGE)
    with tempfile.TemporaryDirectory(prefix="insien-bench-secrets-") as folder:
        root = Path(folder, "root")
        root.mkdir()
        (root / "small.txt").write_text("hello through the egress proxy\n")
        with (root / "big.bin").open("wb") as big:
            for _ in range(args.size):
                big.write(secrets.token_bytes(2**20))
        context, cert = tls_context(Path(folder), HOST)
        env = {
            "INSIEN_EGRESS_ALLOW": ADDRESS,
            "INSIEN_EGRESS_HOSTS": f"{HOST}={ADDRESS}",
            "INSIEN_EGRESS_CA_FILE": str(cert),
            "INSIEN_SECRETS_KEY": secrets.token_urlsafe(32),
            "INSIEN_STATE_DIR": str(Path(folder, "state")),
        }
        with (
            upstream(ADDRESS, root, context) as injected,
            upstream(ADDRESS, root, context) as tunnel,
        ):
            process, server = start_server(f"bench-secrets-{secrets.token_hex(3)}", env)
            try:
                results = trio.run(
                    measure, server, injected.port, tunnel.port, cert.read_text(), args.n, args.size
                )
            finally:
                stop_server(process)
    save(results, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
