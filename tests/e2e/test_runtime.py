"""The Docker runtime and AgentLink in-process: attach before start, and attach again later;
Docker's agent channel against the conformance check every runtime's channel passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import docker
import trio

import insien
from insien._resources import agent_zipapp
from insien.link import AgentLink
from insien.runtime.base import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PYTHON,
    LABEL_INSTANCE,
    LABEL_SANDBOX_ID,
    AgentChannel,
    ContainerSpec,
)
from insien.runtime.docker import DockerRuntime
from tests.channel_conformance import ECHO_PROGRAM, check_agent_channel
from tests.conftest import IMAGE, instance_name


def spec(sandbox_id: str) -> ContainerSpec:
    return ContainerSpec(
        sandbox_id=sandbox_id,
        image=IMAGE,
        labels={LABEL_SANDBOX_ID: sandbox_id, LABEL_INSTANCE: instance_name("runtime")},
        python=DEFAULT_PYTHON,
        capabilities=DEFAULT_CAPABILITIES,
    )


async def test_attach_before_start_sees_the_hello_and_reattach_works(docker_client: object) -> None:
    runtime = await DockerRuntime.connect()
    container_id = await runtime.create(spec("runtime-1"), agent_zipapp())
    try:
        async with trio.open_nursery() as nursery:
            link = AgentLink(await runtime.attach(container_id), name="t", max_line=1 << 20)
            await nursery.start(link.run)
            await runtime.start(container_id)
            with trio.fail_after(30):
                await link.ready.wait()
            assert link.hello is not None
            assert link.hello["protocol"] == 1
            assert link.hello["version"] == insien.__version__
            reply = await link.call({"type": "write", "path": "kept.txt", "content": "still here"})
            assert reply["type"] == "writeResponse"
            nursery.cancel_scope.cancel()
        assert link.closed.is_set()

        # A second attach to the running container (what a restarted server does) works:
        # stdin stayed open, and the agent kept running without anyone attached.
        async with trio.open_nursery() as nursery:
            again = AgentLink(await runtime.attach(container_id), name="t2", max_line=1 << 20)
            await nursery.start(again.run)
            with trio.fail_after(30):
                reply = await again.call({"type": "read", "path": "kept.txt"})
            assert reply["content"] == "still here"
            nursery.cancel_scope.cancel()
    finally:
        await runtime.remove(container_id)
        runtime.close()


async def test_link_reports_agent_gone_when_the_container_is_removed(docker_client: object) -> None:
    runtime = await DockerRuntime.connect()
    container_id = await runtime.create(spec("runtime-2"), agent_zipapp())
    try:
        async with trio.open_nursery() as nursery:
            link = AgentLink(await runtime.attach(container_id), name="t", max_line=1 << 20)
            await nursery.start(link.run)
            await runtime.start(container_id)
            with trio.fail_after(30):
                await link.ready.wait()
            answers: list[dict[str, object]] = []

            async def slow() -> None:
                answers.append(await link.call({"type": "exec", "cmd": "sleep", "args": ["60"]}))

            nursery.start_soon(slow)
            running = {"type": "exec", "cmd": "pgrep", "args": ["-c", "-f", "^sleep 60$"]}
            with trio.fail_after(15):
                while (await link.call(running))["stdout"] != "1\n":  # noqa: ASYNC110
                    await trio.sleep(0.05)  # until the command runs in the sandbox
            await runtime.remove(container_id)
            with trio.fail_after(15):
                await link.closed.wait()
        assert answers
        assert answers[0]["code"] == "AGENT_GONE"
    finally:
        await runtime.remove(container_id)
        runtime.close()


async def test_the_docker_channel_conforms(docker_client: docker.DockerClient) -> None:
    """The same check as the fake runtime's (tests/unit/test_core_on_fake_runtime.py), on
    Docker's attach and frame decoding, with `ECHO_PROGRAM` in place of the agent."""
    runtime = await DockerRuntime.connect()

    @asynccontextmanager
    async def echo_channel() -> AsyncIterator[AgentChannel]:
        def create() -> str:
            container = docker_client.containers.create(
                IMAGE,
                entrypoint=[DEFAULT_PYTHON, "-I", "-S", "-c", ECHO_PROGRAM],
                command=[],
                labels={LABEL_INSTANCE: instance_name("channel")},
                detach=True,
                stdin_open=True,
                network_mode="none",
            )
            return str(container.id)

        container_id = await trio.to_thread.run_sync(create)
        try:
            channel = await runtime.attach(container_id)
            await runtime.start(container_id)
            try:
                yield channel
            finally:
                await channel.aclose()
        finally:
            await runtime.remove(container_id)

    try:
        await check_agent_channel(echo_channel)
    finally:
        runtime.close()
