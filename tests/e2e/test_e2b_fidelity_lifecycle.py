"""E2B's pause variants, auto-resume and `mask_request_host` as the stock `e2b` Python SDK sees
them, where Insien once differed (issue 29, items 11-13): `pause(mode="filesystem")` and an
auto-pause with `mode: "filesystem"` stop the sandbox and a resume boots it anew on its files
(processes gone, files kept); `connect(on_resume="reboot")` does the same to a frozen one;
traffic to a paused sandbox's ports or envd resumes it when its lifecycle says `auto_resume`;
a port's program is told the masked Host."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, SandboxException
from httpx_ws import WebSocketSession, WebSocketUpgradeError, connect_ws

from tests.backends import docker_only
from tests.conftest import Server
from tests.e2e.test_e2b_js import run_suite

pytestmark = pytest.mark.docker
PAUSING = docker_only("no pause and no stop of a pod (tests/unit/test_pause_variants.py: 501)")

PORT = 8000
ECHO_HOST = """
import http.server

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.headers.get("Host", "") + "|" + self.headers.get("X-Forwarded-Host", ""))
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Echo).serve_forever()
"""
WS_HOST = """
import base64, hashlib, socket

listener = socket.create_server(("0.0.0.0", 8001))
while True:
    conn, _ = listener.accept()
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += conn.recv(4096)
    fields = {}
    for line in head.decode().split("\\r\\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    key = fields["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
        b"Connection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept.encode() + b"\\r\\n\\r\\n"
    )
    conn.recv(4096)  # the client's first message, whatever it says
    text = (fields.get("host", "") + "|" + fields.get("x-forwarded-host", "")).encode()
    conn.sendall(bytes([0x81, len(text)]) + text)
    while conn.recv(4096):
        pass
    conn.close()
"""
"""A WebSocket server on 8001 that answers a first message with the Host it was asked for."""
SLEEPING = "import os; print(any(b'sleep\\x00987' in open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()))"  # noqa: E501
"""Whether the `sleep 987` started before a pause still runs."""
BOOT = "cut -d' ' -f22 /proc/1/stat"
"""When the container's init started (clock ticks since the host booted): a new boot, a new one."""


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


@pytest.fixture
def made(e2b_env: Server) -> Iterator[list[Sandbox]]:
    """Sandboxes a test creates, killed at its end whatever happened."""
    sandboxes: list[Sandbox] = []
    yield sandboxes
    for sandbox in sandboxes:
        with contextlib.suppress(SandboxException):
            sandbox.kill()


def poll(condition: Callable[[], bool], what: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what} within {deadline}s")
        time.sleep(0.2)


def state(sandbox_id: str) -> str:
    return str(Sandbox.get_info(sandbox_id).state.value)


def busy_with_files(sbx: Sandbox) -> str:
    """Leave a file and a running process in the sandbox; returns its boot mark."""
    sbx.files.write("kept.txt", "kept across the pause")
    sbx.commands.run("sleep 987", background=True)
    assert sbx.commands.run(f'python3 -c "{SLEEPING}"').stdout.strip() == "True"
    return sbx.commands.run(BOOT).stdout.strip()


def booted_anew(sbx: Sandbox, mark: str) -> None:
    """Files kept, processes gone, a new boot."""
    assert sbx.files.read("kept.txt") == "kept across the pause"
    assert sbx.commands.run(f'python3 -c "{SLEEPING}"').stdout.strip() == "False"
    assert sbx.commands.run(BOOT).stdout.strip() != mark
    assert sbx.commands.run("echo alive").stdout == "alive\n"


@PAUSING
def test_pause_without_memory_boots_anew_on_its_files(made: list[Sandbox]) -> None:
    sbx = Sandbox.create(timeout=300)
    made.append(sbx)
    mark = busy_with_files(sbx)
    assert sbx.pause(mode="filesystem") is True
    assert state(sbx.sandbox_id) == "paused"
    assert sbx.pause(mode="filesystem") is False  # already paused: E2B's 409
    with pytest.raises(SandboxException):  # no auto-resume for it: resumed by connect only
        sbx.commands.run("echo asleep")
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert state(sbx.sandbox_id) == "running"
    booted_anew(resumed, mark)
    # the new boot runs under the same sandbox: envd, the token, the files API all work
    resumed.files.write("after.txt", "written after the boot")
    assert resumed.commands.run("cat after.txt").stdout == "written after the boot"
    with pytest.raises(CommandExitException):  # a failing command fails as commands do
        resumed.commands.run("exit 3")

    async def as_async() -> None:  # the async SDK's keep_memory=False, then its connect
        again = await AsyncSandbox.connect(sbx.sandbox_id)
        assert await again.pause(keep_memory=False) is True
        woken = await AsyncSandbox.connect(sbx.sandbox_id)
        assert (await woken.files.read("after.txt")) == "written after the boot"

    asyncio.run(as_async())


@PAUSING
def test_a_frozen_sandbox_connected_with_reboot_boots_anew(made: list[Sandbox]) -> None:
    sbx = Sandbox.create(timeout=300)
    made.append(sbx)
    mark = busy_with_files(sbx)
    assert sbx.pause() is True  # memory kept: a resume would find the sleep still running
    booted_anew(Sandbox.connect(sbx.sandbox_id, on_resume="reboot"), mark)


@PAUSING
def test_auto_pause_without_memory_at_the_timeout(made: list[Sandbox]) -> None:
    sbx = Sandbox.create(
        timeout=4, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}}
    )
    made.append(sbx)
    info = Sandbox.get_info(sbx.sandbox_id)
    assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
    mark = busy_with_files(sbx)
    poll(lambda: state(sbx.sandbox_id) == "paused", "the sandbox paused at its timeout")
    with pytest.raises(SandboxException):
        sbx.commands.run("echo asleep")
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
    booted_anew(resumed, mark)


def _port(server: Server, sandbox_id: str) -> httpx.Response:
    """A GET to the sandbox's port 8000 through E2B's header form, with no credential (its
    ports are public, E2B's default)."""
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(PORT)}
    return httpx.get(f"{server.url}/e2b/", headers=headers, timeout=30)


def _serving(server: Server, sbx: Sandbox) -> None:
    sbx.files.write("echo_host.py", ECHO_HOST)
    sbx.commands.run("python3 echo_host.py", background=True)
    poll(lambda: _port(server, sbx.sandbox_id).status_code == 200, "the server listened", 30)


@PAUSING
def test_traffic_resumes_a_paused_sandbox_with_auto_resume(
    e2b_env: Server, made: list[Sandbox]
) -> None:
    waking = Sandbox.create(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True})
    sleeping = Sandbox.create(timeout=300, lifecycle={"on_timeout": "pause"})
    made += [waking, sleeping]
    assert Sandbox.get_info(waking.sandbox_id).lifecycle == {
        "on_timeout": "pause",
        "auto_resume": True,
    }
    for sbx in (waking, sleeping):
        _serving(e2b_env, sbx)
        assert sbx.pause() is True

    # a request to its port resumes it, and the program answers (its memory was kept)
    answer = _port(e2b_env, waking.sandbox_id)
    assert answer.status_code == 200
    assert state(waking.sandbox_id) == "running"
    # so does envd: a command on a paused sandbox runs
    assert waking.pause() is True
    assert waking.commands.run("echo awake").stdout == "awake\n"
    assert state(waking.sandbox_id) == "running"

    # without auto_resume it stays paused and says so at once
    started = time.monotonic()
    refused = _port(e2b_env, sleeping.sandbox_id)
    assert refused.status_code == 502
    assert "paused" in refused.json()["message"]
    assert time.monotonic() - started < 10
    with pytest.raises(SandboxException):
        sleeping.commands.run("echo asleep")
    assert state(sleeping.sandbox_id) == "paused"


@PAUSING
def test_auto_resume_after_the_timeout_paused_it(made: list[Sandbox]) -> None:
    sbx = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    made.append(sbx)
    poll(lambda: state(sbx.sandbox_id) == "paused", "the sandbox paused at its timeout")
    assert sbx.commands.run("echo awake").stdout == "awake\n"
    assert state(sbx.sandbox_id) == "running"
    left = Sandbox.get_info(sbx.sandbox_id).end_at.timestamp() - time.time()
    assert 0 < left <= 5  # its own timeout again, not the paused sandbox's longer one


def test_the_filesystem_mode_cannot_auto_resume(e2b_env: Server) -> None:
    """The SDK refuses the combination itself; a raw request hears a clear 400 too."""
    body = {"templateID": "base", "autoPause": True, "autoPauseMemory": False}
    answer = httpx.post(
        f"{e2b_env.url}/e2b/sandboxes",
        headers=e2b_env.headers,
        json={**body, "autoResume": {"enabled": True}},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "autoPauseMemory" in answer.json()["message"]


def test_mask_request_host_is_what_the_program_is_told(
    e2b_env: Server, made: list[Sandbox]
) -> None:
    masked = Sandbox.create(network={"mask_request_host": "${PORT}-app.example.test"})
    plain = Sandbox.create()
    made += [masked, plain]
    network = Sandbox.get_info(masked.sandbox_id).network
    assert network is not None
    assert network["mask_request_host"] == "${PORT}-app.example.test"
    for sbx in (masked, plain):
        _serving(e2b_env, sbx)
    assert _port(e2b_env, masked.sandbox_id).text == (
        f"{PORT}-app.example.test|{PORT}-app.example.test"
    )
    client_host = httpx.URL(e2b_env.url).netloc.decode()
    assert _port(e2b_env, plain.sandbox_id).text == f"{client_host}|{client_host}"

    # a WebSocket to a port is told the masked host too
    masked.files.write("ws_host.py", WS_HOST)
    masked.commands.run("python3 ws_host.py", background=True)
    headers = {"E2b-Sandbox-Id": masked.sandbox_id, "E2b-Sandbox-Port": "8001"}
    said = ""
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=30) as client:
        while not said:
            try:
                opening: AbstractContextManager[WebSocketSession] = connect_ws(
                    f"{e2b_env.url}/e2b/", client, headers=headers
                )
                with opening as ws:
                    ws.send_text("which host?")
                    said = ws.receive_text()
            except WebSocketUpgradeError:  # not listening yet
                assert time.monotonic() < deadline, "the WebSocket server never listened"
                time.sleep(0.2)
    assert said == "8001-app.example.test|8001-app.example.test"


def test_a_wrong_mask_is_refused(e2b_env: Server) -> None:
    answer = httpx.post(
        f"{e2b_env.url}/e2b/sandboxes",
        headers=e2b_env.headers,
        json={"templateID": "base", "network": {"maskRequestHost": "a b\r\nX-Evil: 1"}},
        timeout=30,
    )
    assert answer.status_code == 400


@PAUSING
def test_the_stock_js_sdk_sees_the_same(e2b_env: Server) -> None:
    """tests/e2b_js/lifecycle_fidelity.test.mjs: a pause without memory, auto-resume and
    signed URLs through the JS SDK."""
    done = run_suite(e2b_env, "lifecycle_fidelity.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 3" in done.stdout, done.stdout[-3000:]
