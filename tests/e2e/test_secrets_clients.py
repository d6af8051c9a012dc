"""Secrets from the clients (issue 30): the Python SDK, the JS SDK under node's test runner,
the CLI (values from stdin or a file, never the command line) and the MCP server (binds by
name, never reads a value), each driving a real sandbox whose requests reach the test
upstreams of tests/e2e/test_secrets.py with the real value added by the egress proxy. Its
`world` fixture's end checks that no value made here is in the server's log."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from insien_sandbox import (
    AsyncSecrets,
    NotFoundError,
    Sandbox,
    SecretBinding,
    Secrets,
    UnavailableError,
)
from tests.conftest import Server
from tests.e2e.test_cli_sandbox import insien
from tests.e2e.test_js_sdk import PACKAGE, client_env, node
from tests.e2e.test_mcp import call, params
from tests.e2e.test_secrets import World, curl, world

__all__ = ["world"]  # the fixture, used by name


def fresh(world: World) -> str:
    """A value no test made before, remembered for the log check."""
    value = f"sk-test-{secrets.token_hex(12)}"
    world.values.append(value)
    return value


def test_python_sdk_keeps_rotates_binds_and_deletes(world: World) -> None:
    store = Secrets(world.server.api_key, world.server.url)
    value = fresh(world)
    made = store.create("PYSDK", value, description="the SDK's own")
    assert (made.name, made.version, made.description) == ("PYSDK", 1, "the SDK's own")
    listed = store.list()
    assert "PYSDK" in [s.name for s in listed]
    assert value not in repr(listed)
    api, plain = world.api.port, world.plain.port
    binding = SecretBinding("PYSDK", [f"api.test:{api}"], header="Authorization: Bearer {secret}")
    with Sandbox(
        world.server.api_key,
        world.server.url,
        allow_out=[f"api.test:{api}", "plain.test"],
        secrets=[binding],
    ) as box:
        code, out = curl(box, f"https://api.test:{api}/v1/models", "-f")
        assert code == 0, out
        assert json.loads(out)["headers"]["authorization"] == f"Bearer {value}"
        policy = box.network.get().policy
        assert [b.secret for b in policy.secrets] == ["PYSDK"]
        assert policy.secrets[0] == binding  # what was asked, with the server's placeholder
        assert (policy.secrets[0].placeholder or "").startswith("insien-secret-")

        rotated_value = fresh(world)
        assert store.rotate("PYSDK", rotated_value).version == 2
        _, out = curl(box, f"https://api.test:{api}/", "-f")
        assert json.loads(out)["headers"]["authorization"] == f"Bearer {rotated_value}"

        # Live, the placeholder form: plain HTTP, the placeholder swapped in a header.
        other = fresh(world)
        store.create("PYSDK_PLAIN", other)
        info = box.network.update(
            allow_out=[f"api.test:{api}", "plain.test"],
            secrets=[binding, SecretBinding("PYSDK_PLAIN", ["plain.test"])],
        )
        placeholder = info.policy.secrets[1].placeholder
        assert placeholder is not None
        seen = box.commands.run("printenv INSIEN_SECRET_PYSDK_PLAIN").stdout.strip()
        assert seen == placeholder
        code, out = curl(
            box, f"http://plain.test:{plain}/", "-f", '-H "X-Key: $INSIEN_SECRET_PYSDK_PLAIN"'
        )
        assert code == 0, out
        assert json.loads(out)["headers"]["x-key"] == other
        assert box.network.get().secrets_used == 3

        store.delete("PYSDK")
        _code, out = curl(box, f"https://api.test:{api}/", "-i")
        assert "HTTP/1.1 403 Forbidden" in out, out
        assert "'PYSDK'" in out
    store.delete("PYSDK_PLAIN")
    with pytest.raises(NotFoundError):
        store.delete("PYSDK")
    assert "PYSDK" not in [s.name for s in store.list()]


async def test_async_sdk_and_a_server_without_a_key(world: World, server: Server) -> None:
    store = AsyncSecrets(world.server.api_key, world.server.url)
    value = fresh(world)
    made = await store.create("ASYNC_SDK", value)
    rotated = await store.rotate("ASYNC_SDK", fresh(world), description="now described")
    assert (rotated.version, rotated.description, rotated.created_at) == (
        2,
        "now described",
        made.created_at,
    )
    assert "ASYNC_SDK" in [s.name for s in await store.list()]
    await store.delete("ASYNC_SDK")
    # The suite's shared server was given no INSIEN_SECRETS_KEY: it refuses, saying why.
    with pytest.raises(UnavailableError, match="INSIEN_SECRETS_KEY"):
        await AsyncSecrets(server.api_key, server.url).list()


def test_js_sdk(world: World, tmp_path: Path) -> None:
    """clients/js/test/secrets.test.mjs, told where the upstreams are (without these
    variables, as in the JS suite's own run against a server with no key, it skips)."""
    made_file = tmp_path / "made.json"
    env = {
        **client_env(world.server),
        "INSIEN_TEST_SECRETS_API": f"api.test:{world.api.port}",
        "INSIEN_TEST_SECRETS_PLAIN": f"plain.test:{world.plain.port}",
        "INSIEN_TEST_SECRETS_MADE": str(made_file),
    }
    done = subprocess.run(
        [node(), "--test", "--test-reporter=spec", "test/secrets.test.mjs"],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\bpass 1\b", done.stdout), done.stdout[-3000:]
    assert re.search(r"\bskipped 0\b", done.stdout), done.stdout[-3000:]
    # What the JS test's sandbox sent, as the upstreams received it: the values it made
    # (it writes them down for this check and the log check), added by the proxy.
    made = json.loads(made_file.read_text())
    assert set(made) == {"header", "rotated", "placeholder"}
    world.values.extend(made.values())
    auth = [r["headers"].get("authorization") for r in world.api.received]
    assert f"Bearer {made['header']}" in auth
    assert f"Bearer {made['rotated']}" in auth
    assert made["placeholder"] in [r["headers"].get("x-key") for r in world.plain.received]


def test_cli_reads_values_from_stdin_or_a_file(world: World, tmp_path: Path) -> None:
    server, api = world.server, world.api.port
    value = fresh(world)
    made = insien(server, "secret", "create", "CLI", "-d", "from a pipe", stdin=value + "\n")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "CLI"
    # A value given on the command line is refused: argv is readable by every local user.
    refused = insien(server, "secret", "create", "CLI_ARGV", "not-a-value-either")
    assert refused.returncode == 2
    listed = insien(server, "secret", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    found = {s["name"]: s for s in json.loads(listed.stdout)}
    assert (found["CLI"]["description"], found["CLI"]["version"]) == ("from a pipe", 1)
    assert "CLI_ARGV" not in found
    table = insien(server, "secret", "list").stdout
    assert "CLI" in table
    assert value not in listed.stdout + table

    created = insien(
        server,
        "sandbox",
        "create",
        "-q",
        "--timeout",
        "300",
        "--secret",
        f"CLI=api.test:{api}=Authorization: Bearer {{secret}}",
    )
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    try:
        ran = insien(server, "sandbox", "exec", sandbox_id, f"curl -sSf https://api.test:{api}/")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["headers"]["authorization"] == f"Bearer {value}"
        rotated = tmp_path / "value"
        second = fresh(world)
        rotated.write_text(second + "\n")
        turned = insien(server, "secret", "rotate", "CLI", "--from-file", str(rotated))
        assert turned.returncode == 0, turned.stderr
        assert turned.stdout.strip() == "CLI version 2"
        ran = insien(server, "sandbox", "exec", sandbox_id, f"curl -sSf https://api.test:{api}/")
        assert json.loads(ran.stdout)["headers"]["authorization"] == f"Bearer {second}"
    finally:
        insien(server, "sandbox", "kill", sandbox_id)
    bad = insien(server, "sandbox", "create", "--secret", "CLI")
    assert bad.returncode == 2
    empty = insien(server, "secret", "create", "CLI_EMPTY", stdin="")
    assert empty.returncode == 1
    assert "no value" in empty.stderr
    assert insien(server, "secret", "delete", "CLI").returncode == 0
    assert insien(server, "secret", "delete", "CLI").returncode == 1


@pytest.mark.anyio
async def test_mcp_binds_by_name_and_reads_no_value(world: World, anyio_backend: str) -> None:
    value = fresh(world)
    Secrets(world.server.api_key, world.server.url).create("MCP", value, description="for agents")
    api, plain = world.api.port, world.plain.port
    answers: list[dict[str, Any]] = []
    async with Client(params(world.server)) as client:
        tools = (await client.list_tools()).tools
        # Listing names and binding are the only secret tools: none takes or answers a value.
        assert {t.name for t in tools if "secret" in t.name} == {"list_secrets", "bind_secret"}
        for tool in tools:
            schemas = json.dumps([tool.input_schema, tool.output_schema or {}])
            assert '"value"' not in schemas, tool.name
        listed = await call(client, "list_secrets")
        answers.append(listed)
        assert {"name": "MCP", "description": "for agents", "version": 1} in listed["secrets"]
        binding = {"secret": "MCP", "hosts": [f"api.test:{api}"], "header": "X-Api-Key: {secret}"}
        box = await call(client, "create_sandbox", secrets=[binding])
        answers.append(box)
        sandbox_id = box["sandbox_id"]
        before = len(world.api.received)
        ran = await call(
            client,
            "run_command",
            sandbox_id=sandbox_id,
            command=f"curl -sSf -o /dev/null -w '%{{http_code}}' https://api.test:{api}/mcp",
        )
        answers.append(ran)
        assert ran["stdout"] == "200", ran
        assert world.api.received[before]["headers"]["x-api-key"] == value
        # Live: a placeholder binding for another host, the first kept.
        bound = await call(
            client,
            "bind_secret",
            sandbox_id=sandbox_id,
            binding={"secret": "MCP", "hosts": ["plain.test"]},
        )
        answers.append(bound)
        assert bound["secrets"] == [
            {
                "secret": "MCP",
                "hosts": ["plain.test"],
                "header": None,
                "variable": "INSIEN_SECRET_MCP",
            }
        ]
        assert "plain.test" in bound["allow_out"]
        before = len(world.plain.received)
        ran = await call(
            client,
            "run_command",
            sandbox_id=sandbox_id,
            command=f'curl -sSf -o /dev/null -H "X-Key: $INSIEN_SECRET_MCP" http://plain.test:{plain}/',
        )
        answers.append(ran)
        assert world.plain.received[before]["headers"]["x-key"] == value
        missing = await client.call_tool(
            "bind_secret",
            {"sandbox_id": sandbox_id, "binding": {"secret": "NOPE", "hosts": ["plain.test"]}},
        )
        assert missing.is_error
        await call(client, "destroy_sandbox", sandbox_id=sandbox_id)
    assert all(value not in json.dumps(answer) for answer in answers)
    Secrets(world.server.api_key, world.server.url).delete("MCP")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the mcp client's home
