"""An in-memory `Runtime` for unit tests of the core: no Docker, no threads, no sockets.

A container is a record, and what runs in it is a `FakeProcess` written in trio: by default a
`FakeAgent` that speaks the agent's protocol as far as the core uses it (the hello, `resume`
with its replay, `note`, `env`, `ack`, `cancel`, `ping`, `exec`). Its channel is a pair of
memory channels, so everything runs on trio's clock: tests use
`MockClock(autojump_threshold=0)` (pytest-trio's `autojump_clock` fixture) and a sandbox's
idle timeout or lifetime passes in microseconds.

`FakeRuntime` implements the required core of `Runtime` only (like Kubernetes);
`PausableFakeRuntime` adds the `Pausable` capability (like Docker's freezer).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from insien.runtime.base import (
    LABEL_INSTANCE,
    ContainerInfo,
    ContainerSpec,
    RuntimeFailure,
    StreamKind,
)


class FakeChannel:
    """The agent's stdio as `runtime.base.AgentChannel` describes it, in memory."""

    def __init__(self, process: FakeProcess) -> None:
        self._process = process
        self._send, self._receive = trio.open_memory_channel[tuple[StreamKind, bytes]](math.inf)
        self._closed = False

    def deliver(self, kind: StreamKind, data: bytes) -> None:
        """Output of the process, for whoever reads this channel."""
        self._send.send_nowait((kind, data))

    def end(self) -> None:
        """The process is gone: the reader sees the end of the stream after what is left."""
        self._send.close()

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this channel was closed")
        await trio.lowlevel.checkpoint()
        if self._process.exited:
            raise trio.BrokenResourceError("the process has exited")
        self._process.feed(bytes(data))

    async def receive(self) -> tuple[StreamKind, bytes] | None:
        if self._closed:
            raise trio.ClosedResourceError("this channel was closed")
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return None

    async def aclose(self) -> None:
        self._closed = True
        self._process.disconnect(self)
        await self._receive.aclose()


class FakeProcess:
    """What runs in a fake container: takes stdin bytes, writes to every attached channel
    (nobody attached: the output is lost, as with Docker's `none` log driver)."""

    def __init__(self) -> None:
        self._channels: list[FakeChannel] = []
        self.started = False
        self.exited = False
        self.paused = False
        self._held = bytearray()
        """Stdin written before the start or while frozen (a pipe's buffer)."""

    def connect(self) -> FakeChannel:
        channel = FakeChannel(self)
        if self.exited:
            channel.end()
        else:
            self._channels.append(channel)
        return channel

    def disconnect(self, channel: FakeChannel) -> None:
        if channel in self._channels:
            self._channels.remove(channel)

    def write(self, kind: StreamKind, data: bytes) -> None:
        for channel in self._channels:
            channel.deliver(kind, data)

    def start(self) -> None:
        self.started = True
        self.on_start()
        self._release()

    def feed(self, data: bytes) -> None:
        if not self.started or self.paused:
            self._held += data
        else:
            self.on_input(data)

    def pause(self) -> None:
        self.paused = True

    def unpause(self) -> None:
        self.paused = False
        self._release()

    def _release(self) -> None:
        held, self._held = bytes(self._held), bytearray()
        if held and not self.exited:
            self.on_input(held)

    def exit(self) -> None:
        """The process ends: every attached reader sees the end of its stream."""
        self.exited = True
        for channel in self._channels:
            channel.end()
        self._channels.clear()

    def on_start(self) -> None:
        """What the process does when its container starts."""

    def on_input(self, data: bytes) -> None:
        raise NotImplementedError


class FakeAgent(FakeProcess):
    """The agent's side of the link protocol, as far as the core uses it. `hello=False`
    makes an agent that never says it is ready."""

    def __init__(self, *, hello: bool = True) -> None:
        super().__init__()
        self._hello = hello
        self._buffer = b""
        self._seq = 0
        self._kept: list[tuple[int, bytes]] = []
        """Lines not yet acknowledged, for a `resume` to replay."""
        self.notes: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.last_id = 0
        self.received: list[dict[str, Any]] = []
        """Every message the agent was sent, in order."""

    def hello_message(self) -> dict[str, Any]:
        return {"type": "ready", "protocol": 1, "agent": "fake-agent", "version": "0"}

    def on_start(self) -> None:
        if self._hello:
            self._emit(self.hello_message())

    def _emit(self, message: dict[str, Any]) -> None:
        """One line on stdout: `{"id":` first and `,"seq":n}` last, as the real agent writes."""
        self._seq += 1
        line = json.dumps({**message, "seq": self._seq}, separators=(",", ":")).encode() + b"\n"
        self._kept.append((self._seq, line))
        self.write(StreamKind.STDOUT, line)

    def on_input(self, data: bytes) -> None:
        # Blank lines are skipped, as the agent skips them (a rejoining server's resync).
        self._buffer = (self._buffer + data).lstrip(b"\n")
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._handle(json.loads(line))
            self._buffer = self._buffer.lstrip(b"\n")

    def _handle(self, message: dict[str, Any]) -> None:
        self.received.append(message)
        request_id, kind = message.get("id"), message.get("type")
        if isinstance(request_id, int):
            self.last_id = max(self.last_id, request_id)
        if kind == "ack":
            self._kept = [(seq, line) for seq, line in self._kept if seq > message["seq"]]
        elif kind == "note":
            self.notes.update(message["notes"])
        elif kind == "env":
            self.env = dict(message["env"])
        elif kind == "credit":
            pass
        elif kind == "resume":
            self._resume(request_id, int(message["after"]))
        elif kind == "cancel":
            target = message.get("target")
            self._emit({"id": request_id, "type": "cancelResponse", "target": target})
        elif kind == "ping":
            self._emit({"id": request_id, "type": "pong", "time": 0})
        elif kind == "exec":
            answer = {"type": "execResponse", "exitCode": 0, "stdout": "", "stderr": ""}
            self._emit({"id": request_id, **answer})
        else:
            refusal = {"code": "UNKNOWN_TYPE", "message": f"the fake agent has no {kind!r}"}
            self._emit({"id": request_id, "type": "error", **refusal})

    def _resume(self, request_id: Any, after: int) -> None:
        """The marker, then every kept line numbered above `after` (as `wire.Outbox`)."""
        self._kept = [(seq, line) for seq, line in self._kept if seq > after]
        marker = {
            "id": request_id,
            "type": "resumeResponse",
            "after": after,
            "seq": self._seq,
            "lost": 0,
            "channels": [],
            "notes": self.notes,
            "inFlight": [],
            "lastId": self.last_id,
            "hello": self.hello_message(),
        }
        self.write(StreamKind.STDOUT, json.dumps(marker).encode() + b"\n")
        for _, line in self._kept:
            self.write(StreamKind.STDOUT, line)


class EchoProcess(FakeProcess):
    """`tests/channel_conformance.ECHO_PROGRAM` in memory: each stdin line back on stdout,
    `err:<text>` as <text> on stderr, and `bye` ends the process."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = b""

    def on_input(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer and not self.exited:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line == b"bye":
                self.exit()
            elif line.startswith(b"err:"):
                self.write(StreamKind.STDERR, line[4:] + b"\n")
            else:
                self.write(StreamKind.STDOUT, line + b"\n")


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    process: FakeProcess
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    oom_killed: bool = False

    @property
    def running(self) -> bool:
        return self.process.started and not self.process.exited


class FakeRuntime:
    """The required core of `Runtime`, in memory (no pause, no snapshots, no images)."""

    name = "Fake"
    attach_from_start = True

    def __init__(self, program: Callable[[ContainerSpec], FakeProcess] | None = None) -> None:
        self.program = program or (lambda _spec: FakeAgent())
        """What a new container runs (the spec says which sandbox it is for)."""
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []

    def container(self, container_id: str) -> FakeContainer:
        found = self.containers.get(container_id)
        if found is None:
            raise RuntimeFailure(f"no such container {container_id}")
        return found

    async def create(self, spec: ContainerSpec, agent_zip: bytes) -> str:
        await trio.lowlevel.checkpoint()
        container_id = secrets.token_hex(32)
        self.containers[container_id] = FakeContainer(
            container_id, spec, self.program(spec), labels=dict(spec.labels)
        )
        return container_id

    async def attach(self, container_id: str) -> FakeChannel:
        await trio.lowlevel.checkpoint()
        return self.container(container_id).process.connect()

    async def start(self, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.container(container_id).process.start()

    async def remove(self, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        container = self.containers.pop(container_id, None)
        if container is not None:
            container.process.exit()
            self.removed.append(container_id)

    async def rename(self, container_id: str, name: str) -> None:
        await trio.lowlevel.checkpoint()
        self.container(container_id).name = name

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        await trio.lowlevel.checkpoint()
        container = self.containers.get(container_id)
        if container is None:
            return None
        spec = container.spec
        return ContainerInfo(
            id=container.id,
            name=container.name,
            labels=dict(container.labels),
            running=container.running,
            paused=container.process.paused,
            oom_killed=container.oom_killed,
            gone=False,
            cpus=spec.nano_cpus / 1e9 if spec.nano_cpus else None,
            memory=spec.mem_limit,
            pids=spec.pids_limit,
            oci_runtime=spec.runtime,
            network=spec.network_mode,
        )

    async def list_sandboxes(self, instance: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [
            container.id
            for container in self.containers.values()
            if container.labels.get(LABEL_INSTANCE) == instance
        ]


class PausableFakeRuntime(FakeRuntime):
    """`FakeRuntime` with the `Pausable` capability: a frozen process reads no stdin and
    writes nothing until it is thawed."""

    async def pause(self, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.container(container_id).process.pause()

    async def unpause(self, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.container(container_id).process.unpause()
