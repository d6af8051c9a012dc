"""`python -m bench.volumes [--files N] [--file-kib K] [--rounds R] [--size MIB] [--n N]`:
what a volume costs (issue 32).

One server, one volume, one sandbox that mounts it at /data. Measured, each beside its
baseline in the same run, alternating in rounds so noise spreads evenly:

- small files inside the sandbox: N files of K KiB (default 10k x 100 KiB, 1 GiB) written by
  one Python process into the volume vs into the container's own filesystem (its overlay
  layer, /home/user); timed to the last `write` returning, and again after `syncfs` on the
  target (the bytes on disk). The files are removed between rounds (untimed).
- one file of `--size` MiB and `--n` files of 100 KiB moved over REST: into and out of the
  volume without a sandbox (`PUT/GET /volumes/<name>/files`, each a throwaway container) vs
  the same bytes through the running sandbox (`PUT/GET /sandbox/<id>/files`), both into the
  volume's mount (/data: the same disk) and into the sandbox's own filesystem.

Prints JSON and writes bench/results/volumes.json, which says whether the volume was an ext4
disk on a loop device (the server runs as root: INSIEN_VOLUME_DISKS=auto) or a plain `local`
volume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import trio

from bench.report import save
from insien.tooling.images import build_image
from insien_sandbox import AsyncSandbox, AsyncVolume, VolumeMount
from tests.server_process import IMAGE, Server, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "volumes.json"
VOLUME = "bench"
MOUNT = "/data"
OWN = "/home/user"
SMALL_KIB = 100
DISKS = "ext4 disks on loop devices"
"""What the server logs at start when each volume gets a disk of its own."""

WRITE_FILES = """
import ctypes, json, os, sys, time
root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
block = bytearray(os.urandom(size))
os.makedirs(root)
start = time.perf_counter()
for i in range(count):
    folder = os.path.join(root, str(i // 1000))
    if i % 1000 == 0:
        os.mkdir(folder)
    block[:8] = i.to_bytes(8, "little")  # no two files alike
    with open(os.path.join(folder, f"{i}.bin"), "wb") as out:
        out.write(block)
written = time.perf_counter() - start
fd = os.open(root, os.O_RDONLY)
if libc.syncfs(fd) != 0:  # only the target's filesystem, not every one on the host
    raise OSError(ctypes.get_errno(), "syncfs")
os.close(fd)
print(json.dumps({"write_s": written, "synced_s": time.perf_counter() - start}))
"""
"""Runs in the sandbox: `count` files of `size` bytes under `root`, timed (s)."""

REMOVE = """
import ctypes, os, shutil, sys
shutil.rmtree(sys.argv[1])
fd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
ctypes.CDLL(None).syncfs(fd)
"""
"""Runs in the sandbox: the round's files gone and flushed, so the next round starts clean."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def small_files(
    box: AsyncSandbox, files: int, kib: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds to write `files` x `kib` KiB into the volume and into the container's own layer."""
    await box.files.write("/tmp/write_files.py", WRITE_FILES)
    await box.files.write("/tmp/remove.py", REMOVE)
    targets = {"volume": f"{MOUNT}/small", "own_fs": f"{OWN}/small"}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"write_s": [], "synced_s": []} for name in targets
    }
    for _ in range(rounds):
        for name, root in targets.items():
            done = await box.commands.run(
                f"python3 /tmp/write_files.py {root} {files} {kib * 1024}", timeout=1800
            )
            assert done.exit_code == 0, f"{name}: {done.stderr}"
            for key, value in json.loads(done.stdout).items():
                samples[name][key].append(value)
            gone = await box.commands.run(f"python3 /tmp/remove.py {root}", timeout=600)
            assert gone.exit_code == 0, f"{name}: {gone.stderr}"
    return samples


async def put(client: httpx.AsyncClient, url: str, path: str, data: bytes) -> float:
    """Seconds to upload `data` to `url?path=`; the answer's size (and digest) are checked."""
    start = time.perf_counter()
    answer = await client.put(url, params={"path": path}, content=data)
    elapsed = time.perf_counter() - start
    answer.raise_for_status()
    body = answer.json()
    assert body["bytes"] == len(data), body
    if "sha256" in body:
        assert body["sha256"] == digest(data), body
    return elapsed


async def get(client: httpx.AsyncClient, url: str, path: str, expected: str) -> float:
    """Seconds to download `url?path=` whole (streamed, hashed on the way, then compared)."""
    hashed = hashlib.sha256()
    start = time.perf_counter()
    async with client.stream("GET", url, params={"path": path}) as answer:
        answer.raise_for_status()
        async for chunk in answer.aiter_bytes():
            hashed.update(chunk)
    elapsed = time.perf_counter() - start
    assert hashed.hexdigest() == expected, path
    if "x-insien-sha256" in answer.headers:
        assert answer.headers["x-insien-sha256"] == expected, path
    return elapsed


async def transfers(
    server: Server, sandbox_id: str, size_mib: int, n: int, rounds: int
) -> dict[str, Any]:
    """Upload and download times of one big file and of `n` small ones, per route."""
    routes = {
        # route -> (URL, the path the route names, where it lands in the sandbox)
        "volume_api": (f"/volumes/{VOLUME}/files", "io/{name}"),
        "sandbox_to_volume": (f"/sandbox/{sandbox_id}/files", MOUNT + "/io/{name}"),
        "sandbox_own_fs": (f"/sandbox/{sandbox_id}/files", OWN + "/io/{name}"),
    }
    big = secrets.token_bytes(size_mib * 2**20)
    small = [secrets.token_bytes(SMALL_KIB * 1024) for _ in range(n)]
    big_digest, small_digests = digest(big), [digest(s) for s in small]
    big_s: dict[str, dict[str, list[float]]] = {
        route: {"upload": [], "download": []} for route in routes
    }
    small_ms: dict[str, dict[str, list[float]]] = {
        route: {"upload": [], "download": []} for route in routes
    }
    per_round = max(1, n // rounds)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"X-API-Key": server.api_key}, timeout=1800
    ) as client:
        for round_ in range(rounds):
            for route, (url, template) in routes.items():
                path = template.format(name="big.bin")
                big_s[route]["upload"].append(await put(client, url, path, big))
                big_s[route]["download"].append(await get(client, url, path, big_digest))
                for i in range(round_ * per_round, (round_ + 1) * per_round):
                    path = template.format(name=f"small-{i}.bin")
                    up = await put(client, url, path, small[i])
                    down = await get(client, url, path, small_digests[i])
                    small_ms[route]["upload"].append(up * 1000)
                    small_ms[route]["download"].append(down * 1000)
    return {"big_s": big_s, "small_ms": small_ms, "small_per_route": rounds * per_round}


def medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: statistics.median(v) for k, v in kinds.items()} for name, kinds in samples.items()
    }


async def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    total = args.files * args.file_kib * 1024
    # Room for the small files and the transfers at once, with ext4's own share on top.
    limit = total + (args.size * 2 + args.n * SMALL_KIB // 1024) * 2**20 + 512 * 2**20
    volume = await AsyncVolume.create(VOLUME, limit, server.api_key, server.url)
    try:
        async with AsyncSandbox(
            api_key=server.api_key, base_url=server.url, volumes=[VolumeMount(VOLUME, MOUNT)]
        ) as box:
            await box.commands.run("true")  # creates the sandbox
            assert box.sandbox_id is not None
            filesystems = await box.commands.run(f"df -PT {MOUNT} {OWN} | tail -n +2")
            written = await small_files(box, args.files, args.file_kib, args.rounds)
            moved = await transfers(server, box.sandbox_id, args.size, args.n, args.rounds)
    finally:
        await volume.delete(force=True)
    written_p50 = medians(written)
    big_p50 = medians(moved["big_s"])
    small_p50 = medians(moved["small_ms"])
    mib = total / 2**20
    return {
        "volume_disks": DISKS in server.log(),
        "filesystems": filesystems.stdout.strip().splitlines(),
        "small_files": {
            "files": args.files,
            "file_kib": args.file_kib,
            "mib": mib,
            "rounds": args.rounds,
            "seconds_p50": written_p50,
            "mib_s_p50": {
                name: {k: mib / v for k, v in kinds.items()} for name, kinds in written_p50.items()
            },
            "ratio_volume_to_own_fs": {
                k: written_p50["volume"][k] / written_p50["own_fs"][k]
                for k in ("write_s", "synced_s")
            },
        },
        "big_file": {
            "mib": args.size,
            "seconds_p50": big_p50,
            "mib_s_p50": {
                route: {k: args.size / v for k, v in kinds.items()}
                for route, kinds in big_p50.items()
            },
            "ratio_volume_api_to_sandbox_to_volume": {
                k: big_p50["volume_api"][k] / big_p50["sandbox_to_volume"][k]
                for k in ("upload", "download")
            },
        },
        "small_file": {
            "kib": SMALL_KIB,
            "per_route": moved["small_per_route"],
            "ms_p50": small_p50,
            "ratio_volume_api_to_sandbox_to_volume": {
                k: small_p50["volume_api"][k] / small_p50["sandbox_to_volume"][k]
                for k in ("upload", "download")
            },
        },
        "samples": {
            "small_files_s": written,
            "big_file_s": moved["big_s"],
            "small_file_ms": moved["small_ms"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000, help="small files per round")
    parser.add_argument("--file-kib", type=int, default=100, help="each small file, in KiB")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each")
    parser.add_argument("--size", type=int, default=256, help="the big transfer, in MiB")
    parser.add_argument("--n", type=int, default=30, help="100 KiB transfers per route")
    parser.add_argument(
        "--volume-disks", choices=("auto", "on", "off"), default="auto", help="INSIEN_VOLUME_DISKS"
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()
    build_image(docker.from_env(), tag=IMAGE)
    with tempfile.TemporaryDirectory(prefix="insien-bench-volumes-") as state:
        process, server = start_server(
            f"bench-volumes-{secrets.token_hex(3)}",
            {"INSIEN_STATE_DIR": state, "INSIEN_VOLUME_DISKS": args.volume_disks},
        )
        try:
            results = trio.run(measure, server, args)
        finally:
            stop_server(process)
    results["load_average_at_start"] = load
    save(results, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
