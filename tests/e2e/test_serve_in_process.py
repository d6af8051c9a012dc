"""`serve()` called from Python returns once its `stop` event is set, with the default signal
handling on (issue 10: the signal watcher kept it running)."""

from __future__ import annotations

import tempfile

import httpx
import trio

from insien.config import Settings
from insien.server import serve
from tests.conftest import IMAGE, instance_name


async def test_serve_returns_when_its_stop_event_is_set(docker_client: object) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        api_key="in-process-key-0123456789",
        agent_image=IMAGE,
        instance=instance_name("in-process"),
        pool_size=0,
        state_dir=tempfile.mkdtemp(prefix="insien-state-"),
        shutdown_ends_sandboxes=True,
    )
    stop = trio.Event()
    returned = False

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        nonlocal returned
        await serve(settings, stop=stop, task_status=task_status)
        returned = True

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/health")).status_code == 200
        stop.set()
        with trio.move_on_after(20):
            while not returned:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert returned, "serve() did not return after its stop event"
