"""A real `insien serve` in a subprocess, for the tests and the benchmarks."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.backends import BACKEND, BACKENDS

IMAGE = os.environ.get("INSIEN_TEST_IMAGE", "insien-sandbox:latest")
LISTENING = re.compile(r"Insien listening on (http://\S+)")
STATE_DIR = tempfile.mkdtemp(prefix="insien-state-")
"""One server key for every server this test process starts, so restarts can recover."""


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    instance: str
    log_path: Path
    pid: int

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(
    instance: str, extra_env: dict[str, str] | None = None, image: str = IMAGE
) -> tuple[subprocess.Popen[bytes], Server]:
    """`python -m insien serve` on a free loopback port, with a fresh key, logging to a file."""
    api_key = (extra_env or {}).get("INSIEN_API_KEY") or secrets.token_urlsafe(24)
    suffix = instance
    log_path = Path(tempfile.mkstemp(prefix=f"insien-{suffix}-", suffix=".log")[1])
    env = {
        **os.environ,
        "INSIEN_API_KEY": api_key,
        "INSIEN_JWT_SECRET": secrets.token_urlsafe(32),
        "INSIEN_INSTANCE": instance,
        "INSIEN_HOST": "127.0.0.1",
        "INSIEN_PORT": "0",
        "INSIEN_AGENT_IMAGE": image,
        "INSIEN_LOG_LEVEL": "info",
        # Test servers clean up after themselves; recovery tests turn this off.
        "INSIEN_SHUTDOWN_ENDS_SANDBOXES": "true",
        # No warm pool unless a test asks: most tests look at freshly made containers.
        "INSIEN_POOL_SIZE": "0",
        "INSIEN_POOL_MAX": "0",  # and a fixed size when a test asks for one
        "INSIEN_STATE_DIR": STATE_DIR,
        **BACKENDS[BACKEND],
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "insien", "serve", "--no-build"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # keep a developer's .env out of the tests
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return process, Server(match.group(1), api_key, instance, log_path, process.pid)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()  # reaped here, so a failed start leaves nothing running for later tests
    raise RuntimeError(f"insien serve did not start:\n{log_path.read_text(errors='replace')}")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
