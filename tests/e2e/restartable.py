"""A server that a test can kill and start again with the same identity (port, key, secrets)."""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import Server, start_server, stop_server


class Restartable:
    """One server identity (instance, key, token secret) that can be started many times."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        with socket.socket() as probe:  # one port for every start, as clients expect
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.env = {
            "INSIEN_PORT": str(port),
            "INSIEN_API_KEY": secrets.token_urlsafe(24),
            "INSIEN_JWT_SECRET": secrets.token_urlsafe(32),
            "INSIEN_SHUTDOWN_ENDS_SANDBOXES": "false",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.server: Server | None = None

    def start(self, **env: str) -> Server:
        self.process, self.server = start_server({**self.env, **env}, suffix=self.suffix)
        return self.server

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        return stop_server(self.process)


@pytest.fixture
def restartable(request: pytest.FixtureRequest) -> Iterator[Restartable]:
    one = Restartable(re.sub(r"[^a-z0-9]+", "-", request.node.name[-40:]).strip("-"))
    yield one
    # Whatever the test did, end with a server that ends its sandboxes on the way out.
    if one.process is not None and one.process.poll() is None:
        one.kill()
    one.start(INSIEN_SHUTDOWN_ENDS_SANDBOXES="true")
    assert one.stop() == 0
