"""E2B's control plane as the stock `e2b` Python SDK sees it, where Insien once differed:
connect never shortens a running sandbox's life, the list's order, filters and cursor, metrics
over a time range, named snapshots, a sandbox killed under a streaming command, and `python`
in the default image (issue 29)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from e2b import (
    AsyncSandbox,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
)

from tests.backends import docker_only
from tests.conftest import Server
from tests.e2e.test_e2b_js import run_suite

pytestmark = pytest.mark.docker


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


@pytest.fixture
def sbx(e2b_env: Server) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=300)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def _left(sandbox_id: str) -> float:
    """Seconds until the sandbox's end, as the API says."""
    return (Sandbox.get_info(sandbox_id).end_at - datetime.now(UTC)).total_seconds()


def test_connect_extends_a_running_sandbox_but_never_shortens_it(sbx: Sandbox) -> None:
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert _left(sbx.sandbox_id) > 200  # still its 300 s, not 10
    Sandbox.connect(sbx.sandbox_id, timeout=900)
    assert _left(sbx.sandbox_id) > 800  # a longer timeout extends it

    async def shorter() -> None:
        again = await AsyncSandbox.connect(sbx.sandbox_id, timeout=5)
        assert (await again.commands.run("echo ok")).stdout == "ok\n"

    asyncio.run(shorter())
    assert _left(sbx.sandbox_id) > 800


def test_list_order_filters_and_a_stable_cursor(e2b_env: Server) -> None:
    tag = uuid.uuid4().hex
    made: list[Sandbox] = []
    try:
        for _ in range(3):
            made.append(Sandbox.create(metadata={"fidelity": tag}))
        ids = [s.sandbox_id for s in made]
        query = SandboxQuery(metadata={"fidelity": tag})

        newest_first = Sandbox.list(query=query).next_items()
        assert [s.sandbox_id for s in newest_first] == ids[::-1]  # E2B's default order
        ascending = Sandbox.list(query=query, order="asc").next_items()
        assert [s.sandbox_id for s in ascending] == ids
        with pytest.raises(SandboxException):
            Sandbox.list(query=query, order="sideways").next_items()  # type: ignore[arg-type]

        # paging newest first while a newer sandbox appears: nothing repeats or goes missing
        pages = Sandbox.list(query=query, limit=1)
        seen = [s.sandbox_id for s in pages.next_items()]
        made.append(Sandbox.create(metadata={"fidelity": tag}))
        while pages.has_next:
            seen += [s.sandbox_id for s in pages.next_items()]
        assert seen == ids[::-1]

        started = Sandbox.get_info(ids[1]).started_at
        later = SandboxQuery(metadata={"fidelity": tag}, started_after=started)
        found = [s.sandbox_id for s in Sandbox.list(query=later, order="asc").next_items()]
        assert found == [*ids[1:], made[3].sandbox_id]
        future = SandboxQuery(
            metadata={"fidelity": tag}, started_after=datetime.now(UTC) + timedelta(hours=1)
        )
        assert Sandbox.list(query=future).next_items() == []

        base = SandboxQuery(metadata={"fidelity": tag}, template="base")
        assert len(Sandbox.list(query=base).next_items()) == 4
        other = SandboxQuery(metadata={"fidelity": tag}, template="code-interpreter-v1")
        assert Sandbox.list(query=other).next_items() == []

        async def listed_async() -> list[str]:
            pages = AsyncSandbox.list(query=query, order="asc", limit=2)
            names: list[str] = []
            while pages.has_next:
                names += [s.sandbox_id for s in await pages.next_items()]
            return names

        assert asyncio.run(listed_async()) == [*ids, made[3].sandbox_id]
    finally:
        for sandbox in made:
            sandbox.kill()


def test_metrics_answer_a_time_range_from_a_history(sbx: Sandbox) -> None:
    started = sbx.get_info().started_at
    # before the sandbox existed there is nothing (there used to be the current reading)
    assert (
        sbx.get_metrics(start=started - timedelta(hours=2), end=started - timedelta(hours=1)) == []
    )

    assert len(sbx.get_metrics()) >= 1  # asking starts the history
    deadline = time.monotonic() + 60
    readings = sbx.get_metrics()
    while len(readings) < 3:
        assert time.monotonic() < deadline, f"no 5 s history: {readings}"
        time.sleep(0.5)  # polling for the sampler's next reading, with a deadline
        readings = sbx.get_metrics()
    stamps = [r.timestamp for r in readings]
    assert stamps == sorted(stamps)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    # E2B's 5 s cadence (give or take a slow Docker stats call), not one per request
    assert all(gap >= 3 for gap in gaps), gaps
    assert all(r.mem_used > 0 and r.cpu_count >= 1 for r in readings)

    second = stamps[1]
    window = sbx.get_metrics(start=second, end=second)
    assert [r.timestamp for r in window] == [second]
    since = [r.timestamp for r in sbx.get_metrics(start=second)]
    assert since[: len(stamps) - 1] == stamps[1:]  # and whatever was sampled since

    async def ranged() -> int:
        return len(await AsyncSandbox.get_metrics(sbx.sandbox_id, end=started - timedelta(hours=1)))

    assert asyncio.run(ranged()) == 0


@docker_only("no snapshots (a pod cannot be committed to an image)")
def test_named_snapshots(sbx: Sandbox) -> None:
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    sbx.files.write("/home/user/v.txt", "one")
    first = sbx.create_snapshot(name=name)
    assert first.snapshot_id == f"{name}:default"
    assert first.names == [f"{name}:default"]
    anonymous = sbx.create_snapshot()
    made: list[Sandbox] = []
    try:
        listed = Sandbox.list_snapshots(name=name).next_items()
        assert [s.snapshot_id for s in listed] == [first.snapshot_id]
        assert Sandbox.list_snapshots(name=f"{name}:default").next_items() == listed
        assert Sandbox.list_snapshots(name=f"someone/{name}").next_items() == listed
        assert Sandbox.list_snapshots(name=f"{name}:v9").next_items() == []
        by_id = Sandbox.list_snapshots(name=anonymous.snapshot_id).next_items()
        assert [s.snapshot_id for s in by_id] == [anonymous.snapshot_id]

        made.append(Sandbox.create(name))
        assert made[-1].files.read("/home/user/v.txt") == "one"

        # the name moves to a new snapshot, as E2B assigns a new build to the template
        sbx.files.write("/home/user/v.txt", "two")
        second = sbx.create_snapshot(name=name)
        assert second.snapshot_id == first.snapshot_id
        assert len(Sandbox.list_snapshots(name=name).next_items()) == 1
        made.append(Sandbox.create(second.snapshot_id))
        assert made[-1].files.read("/home/user/v.txt") == "two"
        mine = {
            s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        }
        assert mine == {first.snapshot_id, anonymous.snapshot_id}

        with pytest.raises(SandboxException):
            sbx.create_snapshot(name="not a name!")
    finally:
        for sandbox in made:
            sandbox.kill()
        assert Sandbox.delete_snapshot(first.snapshot_id) is True
        assert Sandbox.delete_snapshot(anonymous.snapshot_id) is True
    assert Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items() == []


def _kill_soon(sandbox_id: str) -> threading.Thread:
    killer = threading.Thread(target=Sandbox.kill, args=(sandbox_id,))
    killer.start()
    return killer


def test_a_sandbox_killed_under_a_command_is_said_to_be_gone(e2b_env: Server) -> None:
    sandbox = Sandbox.create()
    handle = sandbox.commands.run("sleep 60", background=True)
    killer = _kill_soon(sandbox.sandbox_id)
    with pytest.raises(SandboxNotRunningException, match="killed or reached its end of life"):
        handle.wait()
    killer.join()

    async def streamed() -> None:
        sandbox = await AsyncSandbox.create()
        handle = await sandbox.commands.run("sleep 60", background=True)
        await AsyncSandbox.kill(sandbox.sandbox_id)
        with pytest.raises(SandboxNotRunningException, match="killed or reached its end of life"):
            await handle.wait()

    asyncio.run(streamed())


def test_python_is_python3_in_the_default_image(sbx: Sandbox) -> None:
    assert sbx.commands.run("python --version").stdout.startswith("Python 3.")


def test_stock_js_sdk(server: Server) -> None:
    """The same differences through the stock JavaScript SDK, whose kill under a command is a
    generic timeout unless the connection drops (tests/e2b_js/control_fidelity.test.mjs)."""
    done = run_suite(server, "control_fidelity.test.mjs")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "pass 3" in done.stdout, done.stdout[-3000:]
