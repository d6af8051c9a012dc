"""An SDK call its caller abandons is cancelled in the sandbox too, and a background command's
result says why it ended (issue 10)."""

from __future__ import annotations

import anyio
import pytest

from insien_sandbox import AsyncSandbox
from tests.conftest import Server

pytestmark = pytest.mark.anyio  # every async test: under asyncio and under trio


async def no_sleepers_left(box: AsyncSandbox) -> bool:
    return (await box.commands.run("pgrep -x sleep")).exit_code == 1


async def test_a_cancelled_run_kills_its_command(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        with anyio.move_on_after(1.5) as waited:
            await box.commands.run("sleep 600")
        assert waited.cancelled_caught
        with anyio.fail_after(10):
            while not await no_sleepers_left(box):  # noqa: ASYNC110
                await anyio.sleep(0.2)
        # the connection is still good for the next call
        assert (await box.commands.run("echo fine")).stdout == "fine\n"


async def test_a_cancelled_run_with_streaming_callbacks_kills_its_command(server: Server) -> None:
    seen: list[str] = []
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        await box.commands.run("true")  # started: a pod may take seconds (tests/k8s)
        with anyio.move_on_after(2):
            await box.commands.run("while :; do echo tick; sleep 0.2; done", on_stdout=seen.append)
        assert seen, "output streamed before the cancel"
        with anyio.fail_after(10):
            while not await no_sleepers_left(box):  # noqa: ASYNC110
                await anyio.sleep(0.2)


async def test_background_results_carry_timed_out_and_oom(server: Server) -> None:
    async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as box:
        slow = await box.commands.run("sleep 100", background=True, timeout=1)
        result = await slow.wait()
        assert result.timed_out is True
        assert result.oom is False
        hog = await box.commands.run(
            "python3 -c 'b = bytearray(3 * 2**30)'", background=True, timeout=60
        )
        result = await hog.wait()
        assert result.oom is True, result
        assert result.timed_out is False
