"""What every runtime's agent channel must do, checked the same way for each (in the spirit of
`trio.testing.check_one_way_stream`): carry bytes both ways in order, keep stdout and stderr
apart, report the end of the stream, and close cleanly.

The far end of the channel runs `ECHO_PROGRAM` (or, in memory, `tests.fake_runtime.
EchoProcess`) instead of the agent: each stdin line comes back on stdout, `err:<text>` comes
back on stderr, and `bye` ends the process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import trio
import trio.testing

from insien.runtime.base import AgentChannel, StreamKind

ECHO_PROGRAM = """
import sys
for line in sys.stdin.buffer:
    if line == b"bye\\n":
        break
    if line.startswith(b"err:"):
        sys.stderr.buffer.write(line[4:])
        sys.stderr.buffer.flush()
    else:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""

OpenChannel = Callable[[], AbstractAsyncContextManager[AgentChannel]]
"""Opens a channel to a fresh process running `ECHO_PROGRAM` (started), and cleans up after."""

TIMEOUT = 30.0


def _lines(seed: int, total: int) -> list[bytes]:
    """Lines of arbitrary bytes (no newline inside), 1 byte to 64 KiB long, about `total`."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < total:
        body = rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 65536])).replace(b"\n", b"\0")
        line = b"o" + body + b"\n"  # never `bye`, never `err:`
        lines.append(line)
        size += len(line)
    return lines


async def _read(channel: AgentChannel, kind: StreamKind, wanted: int) -> bytes:
    """`wanted` bytes of stream `kind`; the other stream must stay silent meanwhile."""
    found = bytearray()
    while len(found) < wanted:
        piece = await channel.receive()
        assert piece is not None, f"the stream ended after {len(found)} of {wanted} bytes"
        got, data = piece
        assert got is kind, (got, data[:80])
        assert data, "an empty piece"
        found += data
    return bytes(found)


async def check_agent_channel(open_channel: OpenChannel) -> None:
    """Fail (AssertionError) unless the channels `open_channel` gives behave as the link
    needs; see the module's docstring for what runs at the far end."""
    with trio.fail_after(TIMEOUT):
        async with open_channel() as channel:
            # Both ways at once, so a channel that needs its reader to keep up is not stuck.
            lines = _lines(seed=28, total=1 << 20)
            sent = b"".join(lines)
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    for line in lines:
                        await channel.send_all(line)

                nursery.start_soon(send)
                assert await _read(channel, StreamKind.STDOUT, len(sent)) == sent
            await channel.send_all(b"err:on stderr\n")
            assert await _read(channel, StreamKind.STDERR, 10) == b"on stderr\n"
            await channel.send_all(b"one\ntwo\n")
            assert await _read(channel, StreamKind.STDOUT, 8) == b"one\ntwo\n"
            # The end of the process is the end of the stream, and stays so.
            await channel.send_all(b"bye\n")
            assert await channel.receive() is None
            assert await channel.receive() is None
            # Closing is clean, twice, and a closed channel refuses to be used.
            await channel.aclose()
            await channel.aclose()
            for use in (channel.receive(), channel.send_all(b"late\n")):
                try:
                    await use
                except trio.ClosedResourceError:
                    pass
                else:
                    raise AssertionError("a closed channel was used without an error")

        async with open_channel() as channel:
            # A reader waiting for output when its channel is closed is let go at once.
            await channel.send_all(b"ready\n")
            assert await _read(channel, StreamKind.STDOUT, 6) == b"ready\n"
            async with trio.open_nursery() as nursery:
                outcome: list[object] = []

                async def wait() -> None:
                    try:
                        outcome.append(await channel.receive())
                    except trio.ClosedResourceError as exc:
                        outcome.append(exc)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await channel.aclose()
            assert len(outcome) == 1
            assert outcome[0] is None or isinstance(outcome[0], trio.ClosedResourceError)
