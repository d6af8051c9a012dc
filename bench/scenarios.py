"""The benchmark scenarios. Each measures Insien and, in the same run, what a user would
otherwise use (docker-py, the docker CLI, the host itself)."""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import tarfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import trio

from bench.stats import summarize
from insien_sandbox import AsyncSandbox
from tests.server_process import Server, rss_bytes, start_server, stop_server

MIB = 1024 * 1024


POOL_SIZE = 2
"""The warm pool the benchmark server keeps (INSIEN_POOL_SIZE); it grows with demand up to
POOL_MAX, as a default server's does."""
POOL_MAX = 16
COLD: dict[str, float | int | str] = {"pids": 513}
"""Resources no warm pool has: a create with them is a cold start."""


@dataclass(frozen=True)
class Context:
    server: Server
    docker: docker.DockerClient
    image: str
    pool_size: int = POOL_SIZE
    """The warm pool the server keeps (the test of the harness runs one without a pool)."""

    def sandbox(
        self, sandbox_id: str | None = None, resources: dict[str, float | int | str] | None = None
    ) -> AsyncSandbox:
        return AsyncSandbox(
            api_key=self.server.api_key,
            base_url=self.server.url,
            sandbox_id=sandbox_id,
            resources=resources,
        )

    async def pool(self) -> int:
        """How many ready sandboxes the server's warm pool holds."""
        async with httpx.AsyncClient(base_url=self.server.url) as client:
            ready: int = (await client.get("/health")).json().get("pool", 0)
            return ready

    async def settle_pool(self, seconds: float = 150) -> None:
        """Until the warm pool is back at its size (past demand forgotten) and not refilling:
        nothing from an earlier scenario competes for the CPU or serves creates."""
        with trio.move_on_after(seconds):
            while await self.pool() != self.pool_size:  # noqa: ASYNC110
                await trio.sleep(0.5)
        await trio.sleep(1)

    async def wait_for_pool(self, size: int, seconds: float = 120) -> None:
        """Until the server's warm pool holds at least `size` ready sandboxes."""
        with trio.fail_after(seconds):
            while await self.pool() < size:  # noqa: ASYNC110
                await trio.sleep(0.05)

    def baseline_container(self) -> Any:
        """A long-running container of the same image for the docker-py baselines."""
        return self.docker.containers.run(
            self.image,
            ["sleep", "infinity"],
            detach=True,
            init=True,
            network_mode="none",
            labels={"insien.bench": "baseline"},
        )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def command_round_trip(ctx: Context, n: int, n_docker: int) -> dict[str, Any]:
    insien: list[float] = []
    async with ctx.sandbox() as sandbox:
        for _ in range(20):
            await sandbox.run_command("true")
        await ctx.settle_pool()  # the pool's refill after this create is over
        for _ in range(n):
            start = time.perf_counter()
            await sandbox.run_command("true")
            insien.append(_ms(start))

    container = ctx.baseline_container()
    try:
        exec_run: list[float] = []
        for _ in range(n_docker):
            start = time.perf_counter()
            container.exec_run(["true"])
            exec_run.append(_ms(start))
    finally:
        container.remove(force=True)

    host: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)  # noqa: ASYNC221 (the baseline, timed as used)
        host.append(_ms(start))
    return {
        "insien": summarize(insien),
        "docker_exec_run": summarize(exec_run),
        "host_subprocess": summarize(host),
        "samples": {"insien": insien, "docker_exec_run": exec_run, "host_subprocess": host},
    }


def _docker_run(image: str) -> list[str]:
    """`docker run --rm image true` as a user types it (no network, as Insien's sandboxes)."""
    return ["docker", "run", "--rm", "--network", "none", image, "true"]


async def time_to_first_command(ctx: Context, n: int) -> dict[str, Any]:
    await ctx.settle_pool()
    insien: list[float] = []
    for _ in range(n):
        await ctx.wait_for_pool(POOL_SIZE)  # no pool refill competing for the CPU
        # Resources no pool has: this is the cold path.
        async with ctx.sandbox(resources=COLD) as sandbox:
            start = time.perf_counter()
            await sandbox.run_command("true")  # creates the sandbox on first use
            insien.append(_ms(start))
    warm: list[float] = []
    for _ in range(n):
        await ctx.wait_for_pool(POOL_SIZE)  # each sample a real hand-over, not a cold start
        async with ctx.sandbox() as sandbox:
            start = time.perf_counter()
            await sandbox.run_command("true")
            warm.append(_ms(start))
    containers_run: list[float] = []
    create_start: list[float] = []
    docker_run: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        await trio.run_process(_docker_run(ctx.image))
        docker_run.append(_ms(start))
        start = time.perf_counter()
        ctx.docker.containers.run(ctx.image, ["true"], remove=True, network_mode="none")
        containers_run.append(_ms(start))
        start = time.perf_counter()
        container = ctx.docker.containers.create(
            ctx.image, ["sleep", "infinity"], network_mode="none"
        )
        container.start()
        create_start.append(_ms(start))
        container.remove(force=True)
    return {
        "insien_cold": summarize(insien),
        "docker_run_rm": summarize(docker_run),
        "docker_containers_run": summarize(containers_run),
        "docker_create_start": summarize(create_start),
        "insien_warm_pool": summarize(warm),
        "samples": {
            "insien_cold": insien,
            "insien_warm_pool": warm,
            "docker_containers_run": containers_run,
            "docker_run_rm": docker_run,
        },
    }


async def throughput(
    ctx: Context, sandboxes: int, concurrency: int, per_worker: int
) -> dict[str, Any]:
    latencies: list[float] = []
    async with AsyncExitStack() as stack:
        # Entered in this task (each owns a nursery); created and warmed up concurrently.
        boxes = [await stack.enter_async_context(ctx.sandbox()) for _ in range(sandboxes)]
        async with trio.open_nursery() as opener:
            for box in boxes:
                opener.start_soon(box.run_command, "true")

        async def worker(box: AsyncSandbox) -> None:
            for _ in range(per_worker):
                start = time.perf_counter()
                await box.run_command("true")
                latencies.append(_ms(start))

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for box in boxes:
                for _ in range(concurrency):
                    nursery.start_soon(worker, box)
        elapsed = time.perf_counter() - started
    insien = {"commands_per_s": len(latencies) / elapsed, **summarize(latencies)}

    client = docker.DockerClient.from_env(max_pool_size=sandboxes * concurrency)
    containers = [ctx.baseline_container() for _ in range(sandboxes)]
    docker_latencies: list[float] = []
    try:
        limiter = trio.CapacityLimiter(sandboxes * concurrency)

        def one(container_id: str) -> None:
            start = time.perf_counter()
            client.api.exec_start(client.api.exec_create(container_id, ["true"])["Id"])
            docker_latencies.append(_ms(start))

        async def docker_worker(container_id: str) -> None:
            for _ in range(per_worker):
                await trio.to_thread.run_sync(one, container_id, limiter=limiter)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for container in containers:
                for _ in range(concurrency):
                    nursery.start_soon(docker_worker, container.id)
        docker_elapsed = time.perf_counter() - started
    finally:
        for container in containers:
            container.remove(force=True)
        client.close()
    return {
        "load": {"sandboxes": sandboxes, "concurrency": concurrency, "per_worker": per_worker},
        "insien": insien,
        "docker_exec_run": {
            "commands_per_s": len(docker_latencies) / docker_elapsed,
            **summarize(docker_latencies),
        },
    }


def _read_all(command: list[str]) -> int:
    """Run `command` and read its stdout from a pipe as it comes; returns the byte count."""
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        total = 0
        while chunk := process.stdout.read(1024 * 1024):
            total += len(chunk)
    return total


RUNS = 3
"""Bulk scenarios run this many times on each side and report the median: the first transfer
of a process is often a third slower than the next, on both sides."""


async def output_streaming(ctx: Context, size: int) -> dict[str, Any]:
    await ctx.settle_pool()  # a pool growing after the last scenario would share the CPU
    blob = "/home/user/blob.txt"  # /tmp is a size-limited tmpfs
    make = f"head -c {size * 3 // 4} /dev/urandom | base64 -w 0 > {blob}"
    rates: list[float] = []
    async with ctx.sandbox() as sandbox:
        await sandbox.commands.run(make)
        before = rss_bytes(ctx.server.pid)
        peak = before
        received = 0

        def count(data: str) -> None:
            nonlocal received
            received += len(data)

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(ctx.server.pid))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for _ in range(RUNS):
                received = 0
                start = time.perf_counter()
                await sandbox.commands.run(f"cat {blob}", on_stdout=count)
                rates.append(received / MIB / (time.perf_counter() - start))
            nursery.cancel_scope.cancel()

    docker_rates: list[float] = []
    container = ctx.baseline_container()
    try:
        container.exec_run(["sh", "-c", f"mkdir -p /home/user && {make}"])
        for _ in range(RUNS):
            start = time.perf_counter()
            docker_received = await trio.to_thread.run_sync(
                _read_all, ["docker", "exec", container.id, "cat", blob]
            )
            docker_rates.append(docker_received / MIB / (time.perf_counter() - start))
            assert docker_received == received, (docker_received, received)
    finally:
        container.remove(force=True)
    return {
        "bytes": received,
        "runs": RUNS,
        "insien_mb_s": statistics.median(rates),
        "insien_rss_growth_mib": (peak - before) / MIB,
        "docker_exec_cat_mb_s": statistics.median(docker_rates),
        "samples": {"insien_mb_s": rates, "docker_exec_cat_mb_s": docker_rates},
    }


async def files(ctx: Context, size: int) -> dict[str, Any]:
    await ctx.settle_pool()
    data = os.urandom(size)
    uploads: list[float] = []
    downloads: list[float] = []
    mb = size / MIB
    async with ctx.sandbox() as sandbox:
        await sandbox.create()
        await ctx.settle_pool()  # the pool's refill after this create is over
        for _ in range(RUNS):
            start = time.perf_counter()
            await sandbox.files.upload("payload.bin", data)
            uploads.append(mb / (time.perf_counter() - start))
            start = time.perf_counter()
            back = await sandbox.files.download("payload.bin")
            downloads.append(mb / (time.perf_counter() - start))
            assert back == data

    puts: list[float] = []
    gets: list[float] = []
    container = ctx.baseline_container()
    try:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("payload.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(data))
        archive = buffer.getvalue()
        for _ in range(RUNS):
            start = time.perf_counter()
            container.put_archive("/tmp", archive)
            puts.append(mb / (time.perf_counter() - start))
            start = time.perf_counter()
            stream, _ = container.get_archive("/tmp/payload.bin")
            got = sum(len(chunk) for chunk in stream)
            gets.append(mb / (time.perf_counter() - start))
            assert got >= size
    finally:
        container.remove(force=True)
    return {
        "bytes": size,
        "runs": RUNS,
        "insien_upload_mb_s": statistics.median(uploads),
        "insien_download_mb_s": statistics.median(downloads),
        "docker_put_archive_mb_s": statistics.median(puts),
        "docker_get_archive_mb_s": statistics.median(gets),
        "samples": {"upload": uploads, "download": downloads, "put": puts, "get": gets},
    }


def _mem_available() -> int:
    for line in open("/proc/meminfo"):  # noqa: SIM115
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def burst(ctx: Context, n: int) -> dict[str, Any]:
    """`n` creates at once, each followed by its first command: first with the pool at its
    size (most start cold, all at once), then again once the pool has grown from that burst."""

    async def one_burst() -> list[float]:
        latencies: list[float] = []
        async with AsyncExitStack() as stack:
            boxes = [await stack.enter_async_context(ctx.sandbox()) for _ in range(n)]

            async def first_command(box: AsyncSandbox) -> None:
                start = time.perf_counter()
                result = await box.run_command("true")  # creates the sandbox on first use
                assert result.exit_code == 0
                latencies.append(_ms(start))

            async with trio.open_nursery() as nursery:
                for box in boxes:
                    nursery.start_soon(first_command, box)
        return latencies

    await ctx.settle_pool()
    pool_before = await ctx.pool()
    first = await one_burst()
    with trio.move_on_after(120):
        await ctx.wait_for_pool(min(n, POOL_MAX))
    pool_grown = await ctx.pool()
    second = await one_burst()

    docker: list[float] = []

    async def docker_run() -> None:
        start = time.perf_counter()
        await trio.run_process(_docker_run(ctx.image))
        docker.append(_ms(start))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(docker_run)
    return {
        "n": n,
        "pool_before": pool_before,
        "pool_grown": pool_grown,
        "insien_first": summarize(first),
        "insien_next": summarize(second),
        "docker_run_rm": summarize(docker),
        "succeeded": len(first) + len(second),
        "samples": {"insien_first": first, "insien_next": second, "docker_run_rm": docker},
    }


MIN_FREE = 2 * 1024 * MIB
"""The scale run stops early when the host has less than this available."""


async def scale(ctx: Context, limit: int, seconds: float) -> dict[str, Any]:
    pool_before = await ctx.pool()
    available_before = _mem_available()
    deadline = time.monotonic() + seconds
    stopped = ""
    async with AsyncExitStack() as stack:
        count = 0
        while count < limit:
            if time.monotonic() > deadline:
                stopped = f"time limit of {seconds:g}s reached"
                break
            if _mem_available() < MIN_FREE:
                stopped = f"host memory below {MIN_FREE // MIB} MiB available"
                break
            box = await stack.enter_async_context(ctx.sandbox())
            await box.create()
            count += 1
        if stopped:
            print(f"scale: stopped at {count} sandboxes: {stopped}", flush=True)
        await trio.sleep(5)  # let the start-up settle before measuring idle
        # Sandboxes the pool grew by meanwhile are in the host's memory too.
        held = count + max(0, await ctx.pool() - pool_before)
        used = available_before - _mem_available()
        cpu_before = _cpu_seconds(ctx.server.pid)
        await trio.sleep(10)
        idle_cpu = (_cpu_seconds(ctx.server.pid) - cpu_before) / 10 * 100
        rss = rss_bytes(ctx.server.pid)
    return {
        "sandboxes": count,
        "stopped": stopped,
        "host_memory_per_sandbox_mib": used / max(held, 1) / MIB,
        "orchestrator_rss_mib": rss / MIB,
        "orchestrator_idle_cpu_percent": idle_cpu,
    }


async def e2b_first_command(ctx: Context, n: int) -> dict[str, Any]:
    """Create + first `commands.run` through the stock `e2b` Python SDK (its blocking API, in a
    worker thread), beside the same through Insien's own SDK; both take the warm pool."""
    from e2b import Sandbox as E2BSandbox  # the bench venv installs the pinned stock SDK

    await ctx.settle_pool()
    config = {
        "api_url": f"{ctx.server.url}/e2b",
        "sandbox_url": f"{ctx.server.url}/e2b",
        "api_key": ctx.server.api_key,
    }

    def through_e2b() -> float:
        start = time.perf_counter()
        sandbox = E2BSandbox.create(**config)  # type: ignore[arg-type]
        sandbox.commands.run("true")
        elapsed = _ms(start)
        sandbox.kill()
        return elapsed

    e2b: list[float] = []
    own: list[float] = []
    for _ in range(n):
        await ctx.wait_for_pool(POOL_SIZE)
        e2b.append(await trio.to_thread.run_sync(through_e2b))
        await ctx.wait_for_pool(POOL_SIZE)
        async with ctx.sandbox() as sandbox:
            start = time.perf_counter()
            await sandbox.commands.run("true")
            own.append(_ms(start))
    return {
        "e2b_sdk": summarize(e2b),
        "insien_sdk": summarize(own),
        "samples": {"e2b_sdk": e2b, "insien_sdk": own},
    }


async def _get_timed(client: httpx.AsyncClient, url: str) -> tuple[float, int]:
    """Seconds for one GET read to its end, and the bytes it brought."""
    start = time.perf_counter()
    size = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw(1 << 20):
            size += len(chunk)
    return time.perf_counter() - start, size


async def _port_numbers(client: httpx.AsyncClient, base: str, size: int, n: int) -> dict[str, Any]:
    for _ in range(20):  # warm: connections, the app's threads
        await client.get(f"{base}/1024")
    latencies: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        response = await client.get(f"{base}/1024")
        latencies.append(_ms(start))
        assert len(response.content) == 1024
    rates: list[float] = []
    for _ in range(RUNS):
        seconds, got = await _get_timed(client, f"{base}/{size}")
        assert got == size
        rates.append(size / MIB / seconds)
    return {"small": summarize(latencies), "mb_s": statistics.median(rates), "rates": rates}


async def ports(ctx: Context, size: int, n: int) -> dict[str, Any]:
    """HTTP to a server in a sandbox through Insien's port path (no network in the sandbox)
    against the same server published with `docker run -p` (bridge and docker-proxy)."""
    from tests.sandbox_apps import BULK

    await ctx.settle_pool()
    async with ctx.sandbox() as sandbox:
        await sandbox.files.write("bulk.py", BULK)
        await sandbox.commands.run("python3 bulk.py 8300", background=True)
        probe = "import socket; socket.create_connection(('127.0.0.1', 8300), timeout=1)"
        with trio.fail_after(30):
            while (await sandbox.commands.run("python3", ["-c", probe])).exit_code:  # noqa: ASYNC110
                await trio.sleep(0.1)
        base = f"{ctx.server.url}/sandbox/{sandbox.sandbox_id}/ports/8300"
        async with httpx.AsyncClient(headers=ctx.server.headers, timeout=120) as client:
            insien = await _port_numbers(client, base, size, n)

    # Published on loopback, any free port (docker-py's None), as `docker run -p 127.0.0.1::8300`.
    container = ctx.docker.containers.run(  # type: ignore[call-overload]
        ctx.image,
        ["python3", "-c", BULK, "8300"],
        detach=True,
        init=True,
        ports={"8300/tcp": ("127.0.0.1", None)},
        labels={"insien.bench": "baseline"},
    )
    try:
        container.reload()
        published = container.ports["8300/tcp"][0]["HostPort"]
        base = f"http://127.0.0.1:{published}"
        async with httpx.AsyncClient(timeout=120) as client:
            with trio.fail_after(30):
                while True:
                    try:
                        await client.get(f"{base}/1")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
            docker_proxy = await _port_numbers(client, base, size, n)
    finally:
        container.remove(force=True)
    return {
        "bytes": size,
        "runs": RUNS,
        "insien": insien,
        "docker_proxy": docker_proxy,
        "samples": {
            "insien_mb_s": insien.pop("rates"),
            "docker_proxy_mb_s": docker_proxy.pop("rates"),
        },
    }


def egress_upstream(address: str, size: int) -> tuple[Any, int]:
    """An HTTP server on the host, at `address`, serving `size` bytes at /blob (a thread)."""
    import http.server
    import threading

    block = os.urandom(MIB)

    class Blob(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for start in range(0, size, MIB):
                self.wfile.write(block[: min(MIB, size - start)])

    server = http.server.ThreadingHTTPServer((address, 0), Blob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def bridge_gateway(client: docker.DockerClient) -> str:
    """The host's address on Docker's default bridge: what a bridge container reaches the host
    by (a container cannot reach the host's loopback), so both sides fetch from one server."""
    bridge = client.networks.get("bridge")
    return str(bridge.attrs["IPAM"]["Config"][0]["Gateway"])


async def egress(ctx: Context, size: int) -> dict[str, Any]:
    """A download through the sandbox's egress proxy (no interface: the server fetches) against
    the same download from a container on Docker's bridge network. Both run curl inside."""
    gateway = bridge_gateway(ctx.docker)
    upstream, port = egress_upstream(gateway, size)
    url = f"http://{gateway}:{port}/blob"
    curl = f"curl -sS -o /dev/null -w '%{{speed_download}}' {url}"
    try:
        await ctx.settle_pool()
        rates: list[float] = []
        async with ctx.sandbox() as sandbox:
            await sandbox.network.update(allow_out=[f"{gateway}:{port}"])
            for _ in range(RUNS):
                result = await sandbox.commands.run(curl, timeout=300)
                assert result.exit_code == 0, result.stderr
                rates.append(float(result.stdout) / MIB)
        container = ctx.docker.containers.run(
            ctx.image,
            ["sleep", "infinity"],
            detach=True,
            init=True,
            network_mode="bridge",
            labels={"insien.bench": "baseline"},
        )
        bridge: list[float] = []
        try:
            for _ in range(RUNS):
                done = await trio.to_thread.run_sync(container.exec_run, ["sh", "-c", curl])
                assert isinstance(done.output, bytes)
                assert done.exit_code == 0, done.output
                bridge.append(float(done.output) / MIB)
        finally:
            container.remove(force=True)
    finally:
        upstream.shutdown()
        upstream.server_close()
    return {
        "bytes": size,
        "runs": RUNS,
        "insien_mb_s": statistics.median(rates),
        "bridge_mb_s": statistics.median(bridge),
        "samples": {"insien_mb_s": rates, "bridge_mb_s": bridge},
    }


def _ipykernel_round_trips(n: int) -> list[float]:
    """`1+1` through jupyter_client to a local ipykernel on the host: the floor a user who
    built a code interpreter from Jupyter's parts would get (each sample waits for the result
    and the kernel's idle status, as `run_code` waits for the cell's end)."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        samples: list[float] = []
        for i in range(WARMUP + n):
            start = time.perf_counter()
            reply = client.execute_interactive("1+1", timeout=30, output_hook=lambda _: None)
            if i >= WARMUP:
                samples.append(_ms(start))
            assert reply["content"]["status"] == "ok"
        return samples
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


WARMUP = 10


async def code_interpreter(ctx: Context, n: int, n_first: int) -> dict[str, Any]:
    """`run_code("1+1")` in a warm context against jupyter_client + ipykernel on the host, and
    create -> first `run_code` answered, from a warm pool of the interpreter image (whose
    sandboxes start their Python context ahead of use) and cold. Its own server keeps that
    pool, so the other scenarios' pool is untouched."""
    from insien.tooling.images import INTERPRETER_TAG, build_interpreter_image

    await trio.to_thread.run_sync(
        lambda: build_interpreter_image(ctx.docker, tag=INTERPRETER_TAG, default_tag=ctx.image)
    )
    pools = [{"template": INTERPRETER_TAG, "size": POOL_SIZE, "max": POOL_SIZE}]
    process, server = start_server(
        f"bench-code-{os.getpid()}", {"INSIEN_POOLS": json.dumps(pools)}, image=ctx.image
    )
    own = Context(server=server, docker=ctx.docker, image=ctx.image)

    def sandbox(resources: dict[str, float | int | str] | None = None) -> AsyncSandbox:
        return AsyncSandbox(
            api_key=server.api_key,
            base_url=server.url,
            template=INTERPRETER_TAG,
            resources=resources,
        )

    try:
        await own.wait_for_pool(POOL_SIZE)
        warm: list[float] = []
        async with sandbox() as box:
            for i in range(WARMUP + n):
                start = time.perf_counter()
                execution = await box.run_code("1+1")
                if i >= WARMUP:
                    warm.append(_ms(start))
                assert execution.text == "2", execution
        first: list[float] = []
        for _ in range(n_first):
            await own.wait_for_pool(POOL_SIZE)  # each a real hand-over, its context started
            await trio.sleep(1)  # the refill of the last one done
            start = time.perf_counter()
            async with sandbox() as box:
                await box.create()
                assert (await box.run_code("1+1")).text == "2"
                first.append(_ms(start))
        cold: list[float] = []
        for _ in range(n_first):
            start = time.perf_counter()
            async with sandbox(COLD) as box:
                await box.create()
                assert (await box.run_code("1+1")).text == "2"
                cold.append(_ms(start))
    finally:
        stop_server(process)
    jupyter = await trio.to_thread.run_sync(_ipykernel_round_trips, n)
    return {
        "insien_warm_context": summarize(warm),
        "ipykernel_host": summarize(jupyter),
        "first_run_code_pool": summarize(first),
        "first_run_code_cold": summarize(cold),
        "samples": {
            "insien_warm_context": warm,
            "ipykernel_host": jupyter,
            "first_run_code_pool": first,
            "first_run_code_cold": cold,
        },
    }
