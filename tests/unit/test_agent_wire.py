"""The one read of asyncio's private `_transport` (`wire.pipe_fileno`) still works on this
Python: if a release drops it, this fails instead of output pipes silently staying narrow."""

from __future__ import annotations

import asyncio
import os
import stat

from insien_agent.wire import pipe_fileno


def test_pipe_fileno_finds_the_pipe_under_a_subprocess_reader() -> None:
    async def scenario() -> None:
        proc = await asyncio.create_subprocess_exec(
            "sleep", "5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            for reader in (proc.stdout, proc.stderr):
                assert reader is not None
                fd = pipe_fileno(reader)
                assert fd is not None, "asyncio no longer exposes the pipe of a StreamReader"
                assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        finally:
            proc.kill()
            await proc.wait()
        plain = asyncio.StreamReader()
        assert pipe_fileno(plain) is None

    asyncio.run(scenario())
