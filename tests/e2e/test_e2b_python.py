"""The stock `e2b` Python SDK (pinned in noxfile.py), used exactly as its users do: three
environment variables point it at Insien, and nothing else changes."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)
from e2b.connection_config import ConnectionConfig
from e2b.sandbox.commands.command_handle import PtySize

from tests.backends import BACKEND, docker_only, runc_only
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.docker

INTERPRETER_NOT_LOADED = (
    "the test cluster is given only the base image (the code interpreter is the agent's, proven"
    " on pods by tests/e2e/test_protocol_v1.py's commands and the tests here)"
)


def _point_at(monkeypatch: pytest.MonkeyPatch, server: Server, key: str | None = None) -> None:
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", key or server.api_key)


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    _point_at(monkeypatch, server)
    return server


@pytest.fixture
def sbx(e2b_env: Server) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(metadata={"suite": "e2b-python"}, envs={"GLOBAL_VAR": "g"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


OUTLIVE = "sleep 1; touch"
"""A command that goes on a second and then touches a file (named after it) proves it outlived
its client letting go just before: a disconnect that ended it would have done so at once."""


def wait_for_file(sbx: Sandbox, path: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not sbx.files.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared: its command was ended"
        time.sleep(0.1)


def test_commands_foreground(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        "echo $GLOBAL_VAR $LOCAL; pwd; echo oops >&2; whoami",
        envs={"LOCAL": "l"},
        cwd="/tmp",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.exit_code == 0
    assert result.stdout == "g l\n/tmp\nuser\n"
    assert result.stderr == "oops\n"
    assert "".join(out) == result.stdout
    assert "".join(err) == result.stderr

    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 7")
    assert failed.value.exit_code == 7
    assert failed.value.stdout == "partial\n"

    # No stdin unless asked for: a reader of stdin sees its end at once, as with envd.
    assert sbx.commands.run("cat; echo done", timeout=10).stdout == "done\n"


def test_commands_timeout_kills_the_command(sbx: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while any("sleep 30" in " ".join(p.args) for p in sbx.commands.list()):
        assert time.monotonic() < deadline, "the timed-out command still runs"
        time.sleep(0.1)


def test_background_stdin_list_kill_connect(sbx: Sandbox) -> None:
    echo = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(echo.pid, "through stdin\n")
    sbx.commands.close_stdin(echo.pid)
    assert echo.wait().stdout == "through stdin\n"

    sleeper = sbx.commands.run(f"{OUTLIVE} /tmp/sleeper-outlived; sleep 300", background=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert sleeper.pid in listed
    assert listed[sleeper.pid].cmd == "/bin/bash"

    # Leaving a stream stops following the command, not the command.
    sleeper.disconnect()
    wait_for_file(sbx, "/tmp/sleeper-outlived")
    assert sleeper.pid in {p.pid for p in sbx.commands.list()}

    ticker = sbx.commands.run(
        "for i in $(seq 12); do echo tick $i; sleep 0.3; done", background=True
    )
    followed = sbx.commands.connect(ticker.pid)
    assert "tick 12" in followed.wait().stdout

    watcher = sbx.commands.connect(sleeper.pid)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as killed:
        watcher.wait()
    assert killed.value.exit_code == -1  # envd's code for a signalled command
    assert sbx.commands.kill(999_999) is False


@runc_only("root is allowed there: the agent starts root's commands itself (docs/gvisor.md)")
def test_root_is_refused(sbx: Sandbox) -> None:
    with pytest.raises(Exception, match="root is not available in this sandbox"):
        sbx.commands.run("id -u", user="root")
    assert sbx.commands.run("id -u", user="user").stdout == "1000\n"


def test_pty(sbx: Sandbox) -> None:
    seen = bytearray()
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(terminal.pid, PtySize(rows=40, cols=100))
    sbx.pty.send_stdin(terminal.pid, b"stty size; echo PTY-$((40+2))\n")
    sbx.pty.send_stdin(terminal.pid, b"exit\n")
    result = terminal.wait(on_pty=lambda data: seen.extend(data))
    assert result.exit_code == 0
    assert b"40 100" in seen
    assert b"PTY-42" in seen

    sleeping = sbx.pty.create(PtySize(rows=24, cols=80))
    later = bytearray()
    followed = sbx.pty.connect(sleeping.pid, timeout=30)
    sbx.pty.send_stdin(sleeping.pid, b"echo AGAIN-$((1+1))\n")
    for _stdout, _stderr, pty in followed:  # what the shell answers, through the new stream
        later.extend(pty or b"")
        if b"AGAIN-2" in later:
            break
    assert b"AGAIN-2" in later
    assert sbx.pty.kill(sleeping.pid) is True


def test_files(sbx: Sandbox) -> None:
    info = sbx.files.write("/home/user/dir/hello.txt", "hello\n")
    assert info.path == "/home/user/dir/hello.txt"
    assert info.type == FileType.FILE
    assert sbx.files.read("/home/user/dir/hello.txt") == "hello\n"
    blob = bytes(range(256)) * 1000
    sbx.files.write("relative.bin", blob)
    assert bytes(sbx.files.read("/home/user/relative.bin", format="bytes")) == blob
    assert b"".join(sbx.files.read("relative.bin", format="stream")) == blob

    written = sbx.files.write_files(
        [{"path": "/tmp/many/a.txt", "data": "A"}, {"path": "/tmp/many/b.txt", "data": b"B"}]
    )
    assert [w.path for w in written] == ["/tmp/many/a.txt", "/tmp/many/b.txt"]
    assert sbx.commands.run("cat /tmp/many/a.txt /tmp/many/b.txt").stdout == "AB"

    assert sbx.files.make_dir("/home/user/dir/sub/deeper") is True
    assert sbx.files.make_dir("/home/user/dir/sub/deeper") is False
    shallow = {e.name for e in sbx.files.list("/home/user/dir")}
    assert shallow == {"hello.txt", "sub"}
    deep = {e.path for e in sbx.files.list("/home/user/dir", depth=3)}
    assert "/home/user/dir/sub/deeper" in deep

    entry = sbx.files.get_info("/home/user/dir/hello.txt")
    assert (entry.size, entry.owner, entry.permissions) == (6, "user", "-rw-r--r--")
    assert sbx.files.get_info("/home/user/dir").type == FileType.DIR

    moved = sbx.files.rename("/home/user/dir/hello.txt", "/home/user/dir/moved.txt")
    assert moved.path == "/home/user/dir/moved.txt"
    assert sbx.files.exists("/home/user/dir/moved.txt")
    assert not sbx.files.exists("/home/user/dir/hello.txt")
    sbx.files.remove("/home/user/dir")
    assert not sbx.files.exists("/home/user/dir")

    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/missing.txt")


def test_files_refuse_escapes(sbx: Sandbox) -> None:
    sbx.commands.run("ln -s /root /home/user/rootlink && ln -s /etc/shadow /home/user/shadow")
    with pytest.raises(Exception, match=r"(?i)permission|denied|not a regular file"):
        sbx.files.read("/home/user/shadow")
    with pytest.raises(Exception, match=r"(?i)permission|denied"):
        sbx.files.write("/home/user/rootlink/planted", "x")
    with pytest.raises(Exception, match=r"(?i)permission|denied"):
        sbx.files.list("/home/user/rootlink")


def test_lifecycle(e2b_env: Server) -> None:
    first = Sandbox.create(metadata={"suite": "e2b-life", "n": "1"}, timeout=120)
    second = Sandbox.create(metadata={"suite": "e2b-life", "n": "2"}, timeout=120)
    try:
        assert first.is_running()
        info = first.get_info()
        assert info.metadata == {"suite": "e2b-life", "n": "1"}
        assert info.template_id == "base"
        before = info.end_at

        first.set_timeout(600)
        assert first.get_info().end_at > before
        # the older refresh route (no SDK of these versions calls it) extends the same way
        with httpx.Client(base_url=e2b_env.url, headers={"X-API-Key": e2b_env.api_key}) as api:
            refreshed = api.post(
                f"/e2b/sandboxes/{first.sandbox_id}/refreshes", json={"duration": 900}
            )
            assert refreshed.status_code == 204
            assert (first.get_info().end_at - first.get_info().started_at).total_seconds() > 800
            unsupported = api.get("/e2b/nodes")
            assert unsupported.status_code == 501
            assert unsupported.json() == {
                "code": 501,
                "message": "GET /nodes is not supported by Insien's E2B front"
                " (see docs/e2b.md for what is)",
            }

        query = SandboxQuery(metadata={"suite": "e2b-life"})
        pages = Sandbox.list(query=query, limit=1)
        seen: list[str] = []
        while pages.has_next:
            seen += [s.sandbox_id for s in pages.next_items()]
        assert sorted(seen) == sorted([first.sandbox_id, second.sandbox_id])
        only = Sandbox.list(query=SandboxQuery(metadata={"n": "2"})).next_items()
        assert [s.sandbox_id for s in only] == [second.sandbox_id]

        again = Sandbox.connect(first.sandbox_id)
        assert again.commands.run("echo again").stdout == "again\n"

        metrics = first.get_metrics()
        assert metrics
        assert metrics[0].mem_used > 0
        assert metrics[0].cpu_count >= 1

        if BACKEND == "kubernetes":  # a pod cannot be frozen: refused, saying so
            with pytest.raises(SandboxException, match="not available on Kubernetes"):
                first.pause()
        else:
            first.pause()
            assert Sandbox.get_info(first.sandbox_id).state.value == "paused"
            paused = SandboxQuery(metadata={"suite": "e2b-life"}, state=[SandboxState.PAUSED])
            listed = Sandbox.list(query=paused).next_items()
            assert [s.sandbox_id for s in listed] == [first.sandbox_id]
        resumed = Sandbox.connect(first.sandbox_id)
        assert resumed.commands.run("echo resumed").stdout == "resumed\n"
    finally:
        first.kill()
        second.kill()
    assert not first.is_running()
    with pytest.raises(NotFoundException):
        Sandbox.connect(first.sandbox_id)


def test_bad_key_and_unknown_template(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _point_at(monkeypatch, server, key="not-a-key")
    with pytest.raises(AuthenticationException):
        Sandbox.create()
    _point_at(monkeypatch, server)
    with pytest.raises(Exception, match=r"not allowed|not an image"):
        Sandbox.create(template="Not An Image!")


def test_access_tokens_open_one_sandbox_only(e2b_env: Server) -> None:
    mine = Sandbox.create()
    other = Sandbox.create()
    try:
        with pytest.raises(InvalidArgumentException):
            mine.files.list("/home/user", depth=0)
        for token in ("forged", other._envd_access_token):
            config = ConnectionConfig(
                extra_sandbox_headers={
                    "E2b-Sandbox-Id": mine.sandbox_id,
                    "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
                    "X-Access-Token": str(token),
                }
            )
            stolen = Sandbox(
                sandbox_id=mine.sandbox_id,
                envd_version=mine._envd_version,
                envd_access_token=str(token),
                sandbox_domain=None,
                connection_config=config,
                traffic_access_token=None,
            )
            with pytest.raises(AuthenticationException):
                stolen.commands.run("true")
            with pytest.raises(AuthenticationException):
                stolen.files.read("/etc/hostname")
    finally:
        mine.kill()
        other.kill()


def test_huge_upload_is_refused() -> None:
    process, server = start_server(
        {"INSIEN_MAX_UPLOAD_BYTES": str(1024 * 1024), "INSIEN_POOL_SIZE": "0"}, "e2b-limits"
    )
    try:
        mp = pytest.MonkeyPatch()
        _point_at(mp, server)
        try:
            sandbox = Sandbox.create()
            try:
                with pytest.raises(Exception, match="limit"):
                    sandbox.files.write("/tmp/big.bin", b"x" * (2 * 1024 * 1024))
                assert not sandbox.files.exists("/tmp/big.bin")
                sandbox.files.write("/tmp/small.bin", b"x" * 1000)
                assert sandbox.files.get_info("/tmp/small.bin").size == 1000
            finally:
                sandbox.kill()
        finally:
            mp.undo()
    finally:
        assert stop_server(process) == 0


def test_async_sdk_under_asyncio(e2b_env: Server) -> None:
    async def main() -> tuple[str, str, list[str]]:
        sandbox = await AsyncSandbox.create()
        try:
            chunks: list[str] = []
            result = await sandbox.commands.run(
                "for i in 1 2 3; do echo $i; done", on_stdout=chunks.append
            )
            await sandbox.files.write("/tmp/async.txt", "async ok")
            content = await sandbox.files.read("/tmp/async.txt")
            handles = await asyncio.gather(*(sandbox.commands.run(f"echo {n}") for n in range(5)))
            return result.stdout, content, [h.stdout for h in handles]
        finally:
            await sandbox.kill()

    stdout, content, parallel = asyncio.run(main())
    assert stdout == "1\n2\n3\n"
    assert content == "async ok"
    assert parallel == [f"{n}\n" for n in range(5)]


def test_watch_dir_polled_and_streamed(sbx: Sandbox) -> None:
    sbx.files.make_dir("/home/user/watched/sub")
    handle = sbx.files.watch_dir("/home/user/watched", recursive=True)
    sbx.files.write("/home/user/watched/a.txt", "a")
    sbx.files.write("/home/user/watched/sub/b.txt", "b")
    sbx.commands.run("chmod 600 /home/user/watched/a.txt && rm /home/user/watched/a.txt")
    wanted = {
        ("a.txt", FilesystemEventType.CREATE),
        ("a.txt", FilesystemEventType.CHMOD),
        ("a.txt", FilesystemEventType.REMOVE),
        ("sub/b.txt", FilesystemEventType.CREATE),
    }
    seen: set[tuple[str, FilesystemEventType]] = set()
    deadline = time.monotonic() + 15
    while not wanted <= seen:
        assert time.monotonic() < deadline, f"saw only {seen}"
        seen |= {(e.name, e.type) for e in handle.get_new_events()}
        time.sleep(0.1)
    handle.stop()
    with pytest.raises(Exception, match=r"not found|stopped"):
        handle.get_new_events()

    async def streamed() -> set[tuple[str, FilesystemEventType]]:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
        got: set[tuple[str, FilesystemEventType]] = set()
        done = asyncio.Event()

        def on_event(event: FilesystemEvent) -> None:
            got.add((event.name, event.type))
            if ("c.txt", FilesystemEventType.CREATE) in got:
                done.set()

        watching = await sandbox.files.watch_dir("/home/user/watched", on_event=on_event)
        # an upload writes the file in place, as envd does: `c.txt` is created, then written
        await sandbox.files.write("/home/user/watched/c.txt", "c")
        await asyncio.wait_for(done.wait(), 15)
        await watching.stop()  # type: ignore[no-untyped-call]
        return got

    assert ("c.txt", FilesystemEventType.CREATE) in asyncio.run(streamed())
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("/home/user/no-such-dir")


def test_stream_input_in_order(sbx: Sandbox) -> None:
    reader = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(reader.pid, (f"line {n}\n" for n in range(200)))
    sbx.commands.close_stdin(reader.pid)
    assert reader.wait().stdout == "".join(f"line {n}\n" for n in range(200))

    seen = bytearray()
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.stream_input(terminal.pid, [b"echo STREAMED-$((6*7))\n", b"exit\n"])
    terminal.wait(on_pty=lambda data: seen.extend(data))
    assert b"STREAMED-42" in seen

    with pytest.raises(NotFoundException):
        sbx.commands.stream_input(999_999, ["lost"])


@docker_only("no snapshots (a pod cannot be committed to an image)")
def test_snapshots_and_fork(sbx: Sandbox) -> None:
    sbx.files.write("/home/user/state.txt", "before")
    snapshot = sbx.create_snapshot()
    assert snapshot.snapshot_id.startswith("insien-snapshot:")
    listed = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
    assert [s.snapshot_id for s in listed] == [snapshot.snapshot_id]

    copy = Sandbox.create(template=snapshot.snapshot_id)
    forks = sbx.fork(count=2)
    try:
        assert copy.files.read("/home/user/state.txt") == "before"
        assert len(forks) == 2
        for fork in forks:
            assert isinstance(fork, Sandbox)
            assert fork.sandbox_id != sbx.sandbox_id
            assert fork.files.read("/home/user/state.txt") == "before"
            assert fork.get_info().metadata == {"suite": "e2b-python"}
        first = forks[0]
        assert isinstance(first, Sandbox)
        first.files.write("/home/user/state.txt", "changed in one fork")
        assert sbx.files.read("/home/user/state.txt") == "before"
    finally:
        copy.kill()
        for fork in forks:
            if isinstance(fork, Sandbox):
                fork.kill()
    # the fork kept its snapshot as the tenant's: both are there to delete
    kept = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
    assert len(kept) == 2
    for snap in kept:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items() == []


def test_git_helpers_run_as_commands(sbx: Sandbox) -> None:
    sbx.git.init("/home/user/repo", initial_branch="main")
    sbx.files.write("/home/user/repo/README.md", "hello\n")
    assert sbx.git.status("/home/user/repo").has_changes
    sbx.git.add("/home/user/repo")
    sbx.git.commit(
        "/home/user/repo", "first", author_name="Insien Test", author_email="test@insien.invalid"
    )
    status = sbx.git.status("/home/user/repo")
    assert status.is_clean
    assert status.current_branch == "main"
    sbx.git.create_branch("/home/user/repo", "feature")
    assert "feature" in sbx.git.branches("/home/user/repo").branches
    log = sbx.commands.run("git -C /home/user/repo log --format=%an:%s").stdout
    assert log == "Insien Test:first\n"


def test_an_abandoned_stream_stops_following_not_the_command(sbx: Sandbox) -> None:
    """A client that closes `Start`'s HTTP response mid-stream: the command goes on, the server
    lets go of the stream, and the sandbox serves on."""
    headers = {
        "E2b-Sandbox-Id": sbx.sandbox_id,
        "X-Access-Token": str(sbx._envd_access_token),
        "Content-Type": "application/connect+json",
    }
    body = json.dumps(
        {
            "process": {
                "cmd": "/bin/bash",
                "args": ["-c", f"echo begun; {OUTLIVE} /tmp/abandoned-outlived; sleep 300"],
            }
        }
    ).encode()
    envelope = struct.pack(">BI", 0, len(body)) + body
    url = f"{sbx.connection_config.api_url}/process.Process/Start"
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=headers, content=envelope) as response,
    ):
        assert response.status_code == 200
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= 5 and len(received) >= 5 + struct.unpack(">I", received[1:5])[0]:
                break
        length = struct.unpack(">I", received[1:5])[0]
        pid = json.loads(received[5 : 5 + length])["event"]["start"]["pid"]
    # the response is closed: the sleeper still runs, and can be found and killed
    wait_for_file(sbx, "/tmp/abandoned-outlived")
    assert pid in {p.pid for p in sbx.commands.list()}
    assert sbx.commands.kill(pid) is True
    assert sbx.commands.run("echo still serving").stdout == "still serving\n"


def test_logs_carry_the_agents_stderr(sbx: Sandbox, e2b_env: Server) -> None:
    headers = {"X-API-Key": e2b_env.api_key}
    with httpx.Client(base_url=e2b_env.url, headers=headers, timeout=30) as client:
        # killing every process of the user takes the agent's command helper too: it says so
        assert client.post(f"/sandbox/{sbx.sandbox_id}/kill-all").status_code == 200
        assert sbx.commands.run("echo after").stdout == "after\n"
        deadline = time.monotonic() + 10
        while True:
            logs = client.get(f"/e2b/v2/sandboxes/{sbx.sandbox_id}/logs").json()
            if any("spawner helper" in entry["message"] for entry in logs["logEntries"]):
                break
            assert time.monotonic() < deadline, logs
            time.sleep(0.2)
        assert all(entry["timestamp"].endswith("Z") for entry in logs["logs"])
        missing = client.get("/e2b/sandboxes/no-such-sandbox/logs")
        assert missing.status_code == 404
        assert missing.json()["code"] == 404


@docker_only("no pause (a pod cannot be frozen)")
def test_auto_pause_at_the_end_of_life(e2b_env: Server) -> None:
    sandbox = Sandbox.create(timeout=5, lifecycle={"on_timeout": "pause"})
    try:
        sandbox.files.write("/home/user/kept.txt", "kept across the pause")
        deadline = time.monotonic() + 20
        while Sandbox.get_info(sandbox.sandbox_id).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "the sandbox did not pause at its timeout"
            time.sleep(0.2)
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120)
        assert resumed.files.read("/home/user/kept.txt") == "kept across the pause"
        info = Sandbox.get_info(sandbox.sandbox_id)
        assert info.state == SandboxState.RUNNING
        assert (info.end_at - info.started_at).total_seconds() > 60
    finally:
        sandbox.kill()


@docker_only(INTERPRETER_NOT_LOADED)
def test_the_code_interpreter_template(
    server: Server, monkeypatch: pytest.MonkeyPatch, interpreter_image: str
) -> None:
    """`code-interpreter-v1` (the E2B code interpreter SDK's default) is the interpreter image:
    Debian's matplotlib, numpy and pandas are there."""
    _point_at(monkeypatch, server)
    sandbox = Sandbox.create(template="code-interpreter-v1")
    try:
        assert Sandbox.get_info(sandbox.sandbox_id).template_id == "code-interpreter-v1"
        probe = sandbox.commands.run("python3 -c 'import matplotlib, numpy, pandas; print(1)'")
        assert probe.stdout == "1\n"
    finally:
        sandbox.kill()


@docker_only(INTERPRETER_NOT_LOADED)
def test_the_stock_code_interpreter_sdk(
    server: Server, monkeypatch: pytest.MonkeyPatch, interpreter_image: str
) -> None:
    """`e2b-code-interpreter` unchanged: run_code with streaming callbacks and state kept,
    results with PNG charts, errors, contexts (create, list, restart, remove), a context that
    died, JavaScript, and E2B's other languages refused."""
    from e2b import SandboxException
    from e2b_code_interpreter import Sandbox as CodeSandbox  # type: ignore[import-not-found,import-untyped,unused-ignore]  # no py.typed

    _point_at(monkeypatch, server)
    sandbox = CodeSandbox.create()  # its default template: code-interpreter-v1
    try:
        streamed: list[str] = []
        first = sandbox.run_code(
            "x = 41\nprint('hi')\nx + 1", on_stdout=lambda m: streamed.append(m.line)
        )
        assert first.text == "42"
        assert first.logs.stdout == ["hi\n"]
        assert streamed == ["hi\n"]
        assert first.execution_count is not None
        chart = sandbox.run_code(
            "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.show()"
        )
        assert chart.results
        assert chart.results[0].png
        failed = sandbox.run_code("x / 0")
        assert failed.error is not None
        assert failed.error.name == "ZeroDivisionError"
        context = sandbox.create_code_context()
        assert sandbox.run_code("x", context=context).error is not None  # its own namespace
        assert context.id in {c.id for c in sandbox.list_code_contexts()}
        sandbox.restart_code_context(context)
        sandbox.remove_code_context(context)
        assert context.id not in {c.id for c in sandbox.list_code_contexts()}
        assert sandbox.run_code("[1, 2].map(n => n * 2)", language="js").text == "[ 2, 4 ]"
        doomed = sandbox.create_code_context()
        with pytest.raises(SandboxException, match="CONTEXT_DIED"):
            sandbox.run_code("import os\nos._exit(1)", context=doomed)
        with pytest.raises(SandboxException, match="exited with code 1"):
            sandbox.run_code("1", context=doomed)  # reported again, never a hang
        sandbox.restart_code_context(doomed)
        assert sandbox.run_code("2", context=doomed).text == "2"
        for language in ("r", "java", "bash"):  # E2B's other kernels: refused, saying so
            with pytest.raises(SandboxException, match="not available: python or js"):
                sandbox.run_code("1", language=language)
    finally:
        sandbox.kill()
