"""The bounded JSON decoders (the server's and the agent's) and the NUL refusals (issue 27,
W2-W4): what they accept, what they refuse, and that nothing but `JsonRefused` comes out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from insien import untrusted_json as server_json
from insien.api.e2b.connect import Code, ConnectError, parse_stream_request, parse_unary
from insien.api.e2b.process import StartRequest
from insien.protocol import ErrorCode, ProtocolError, parse_request
from insien_agent import untrusted_json as agent_json
from insien_agent.errors import BAD_REQUEST, AgentError
from insien_agent.spawner import refuse_nul
from tests.agent_process import run_agent

Loads = Callable[..., Any]
DECODERS = pytest.mark.parametrize("loads", [server_json.loads, agent_json.loads])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@DECODERS
def test_ordinary_documents_decode_as_json_does(loads: Loads) -> None:
    text = '{"a": [1, 2.5, "x\\u0000y", null, true], "b": {"c": {}}}'
    assert loads(text, max_bytes=1000) == {
        "a": [1, 2.5, "x\x00y", None, True],
        "b": {"c": {}},
    }
    assert loads(text.encode(), max_bytes=1000)["b"] == {"c": {}}
    assert loads(b"42", max_bytes=2) == 42
    assert loads(nested(64), max_bytes=1000) == loads(nested(64), max_bytes=1000)


@DECODERS
@pytest.mark.parametrize(
    "document",
    [
        "[" * 200_000,  # the bomb: Python's json raises RecursionError on it
        nested(65),  # valid, one level too deep
        '{"a": ' * 65 + "1" + "}" * 65,
        "[" + "[]," * 1000 + nested(70) + "]",  # deep after a long shallow run
        '["[[[[", ' + nested(65) + "]",
    ],
)
def test_deep_nesting_is_refused_never_a_recursion_error(loads: Loads, document: str) -> None:
    with pytest.raises(ValueError, match="nest") as refused:
        loads(document, max_bytes=10_000_000)
    assert type(refused.value).__name__ == "JsonRefused"


@DECODERS
def test_brackets_inside_strings_do_not_count(loads: Loads) -> None:
    assert loads('["' + "[" * 10_000 + '"]', max_bytes=100_000) == ["[" * 10_000]


@DECODERS
@pytest.mark.parametrize(
    "document", [b"", b"{", b"nope", b"\xff\xfe\xfa", b'{"a": 1}}', b"1" * 5000]
)
def test_what_is_not_json_is_refused(loads: Loads, document: bytes) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        loads(document, max_bytes=10_000)


@DECODERS
def test_the_size_bound_comes_first(loads: Loads) -> None:
    with pytest.raises(ValueError, match="over the limit"):
        loads(b"[" * 101, max_bytes=100)
    assert loads(b" " * 90 + b"[1]", max_bytes=100) == [1]


@DECODERS
def test_a_smaller_depth_can_be_asked_for(loads: Loads) -> None:
    assert loads(nested(3), max_bytes=100, max_depth=3) == [[[]]]
    with pytest.raises(ValueError, match="deeper than 2"):
        loads(nested(3), max_bytes=100, max_depth=2)


def test_the_agent_tells_a_broken_bound_from_stray_text() -> None:
    """The kernel's pipe reports the first (an attack on its reader) and drops the second
    quietly (a JS cell's child process may write there)."""
    for document, bound in (("[" * 200_000, True), (nested(65), True), ("hello", False)):
        with pytest.raises(agent_json.JsonRefused) as refused:
            agent_json.loads(document, max_bytes=1_000_000)
        assert refused.value.bound is bound
    with pytest.raises(agent_json.JsonRefused) as refused:
        agent_json.loads("[1]", max_bytes=2)
    assert refused.value.bound


def test_envd_messages_refuse_a_bomb_as_invalid_argument() -> None:
    for parse, body in (
        (parse_unary, b"[" * 200_000),
        (parse_stream_request, bytes([0]) + (200_000).to_bytes(4, "big") + b"[" * 200_000),
    ):
        with pytest.raises(ConnectError) as refused:
            parse(body)
        assert refused.value.code is Code.INVALID_ARGUMENT
        assert "nest" in refused.value.message
    assert parse_unary(b"") == {}
    assert parse_unary(b'{"path": "/"}') == {"path": "/"}


@pytest.mark.parametrize(
    "fields",
    [
        {"cmd": "a\x00"},
        {"cmd": "a", "args": ["b", "\x00"]},
        {"cmd": "a", "cwd": "/\x00"},
        {"cmd": "a", "env": {"\x00": "v"}},
        {"cmd": "a", "env": {"k": "\x00"}},
    ],
)
def test_the_protocol_refuses_a_nul_in_what_reaches_the_os(fields: dict[str, Any]) -> None:
    for kind in ("exec", "spawn"):
        with pytest.raises(ProtocolError) as refused:
            parse_request({"id": 1, "type": kind, **fields})
        assert refused.value.code is ErrorCode.BAD_REQUEST
        (field,) = set(fields) - {"cmd"} or {"cmd"}
        assert f"field '{field}" in refused.value.message
        assert "NUL" in refused.value.message
        envd = {**fields, "envs": fields.get("env", {})}
        envd.pop("env", None)
        with pytest.raises(ValueError, match="NUL"):
            StartRequest.model_validate({"process": envd})


def test_the_protocol_refuses_a_nul_in_code_contexts_too() -> None:
    for message in (
        {"id": 1, "type": "runCode", "code": "1", "envs": {"A": "\x00"}},
        {"id": 1, "type": "createContext", "cwd": "\x00"},
    ):
        with pytest.raises(ProtocolError, match="NUL"):
            parse_request(message)
    # NUL in a cell's code is only text
    assert parse_request({"id": 1, "type": "runCode", "code": "'\x00'"})["code"] == "'\x00'"


def test_the_agent_refuses_a_nul_before_spawning() -> None:
    refuse_nul(cmd="ls", args=["-l"], cwd="/tmp", env={"A": "b"})
    cases: list[dict[str, str | list[str] | dict[str, str]]] = [
        {"cmd": "l\x00s"},
        {"args": ["\x00"]},
        {"cwd": "/\x00"},
        {"env": {"A\x00": "b"}},
        {"env": {"A": "\x00"}},
    ]
    for fields in cases:
        with pytest.raises(AgentError) as refused:
            refuse_nul(**fields)
        assert refused.value.code == BAD_REQUEST
        assert repr(next(iter(fields))) in refused.value.message


async def test_the_agent_answers_a_nul_at_once_and_the_next_command_runs(tmp_path: Path) -> None:
    """Through the agent's own protocol (no server in front): BAD_REQUEST, not a spawner that
    waits 5 s for a helper that never answers."""
    async with run_agent(tmp_path) as agent:
        commands: list[dict[str, Any]] = [
            {"cmd": "echo", "args": ["\x00"]},
            {"cmd": "echo", "cwd": "\x00"},
            {"cmd": "echo", "env": {"A": "\x00"}},
            {"cmd": "echo", "pty": True, "args": ["\x00"]},
        ]
        for n, fields in enumerate(commands):
            kind = "spawn" if "pty" in fields else "exec"
            await agent.send({"id": n, "type": kind, **fields})
            reply = await agent.receive(timeout=2)
            assert (reply["id"], reply["type"], reply["code"]) == (n, "error", BAD_REQUEST)
        await agent.send({"id": "cell", "type": "runCode", "code": "1", "envs": {"A": "\x00"}})
        reply = await agent.receive(timeout=30)
        assert (reply["type"], reply["code"]) == ("error", BAD_REQUEST), reply
        await agent.send({"id": "ok", "type": "exec", "cmd": "echo", "args": ["fine"]})
        reply = await agent.receive(timeout=10)
        assert (reply["type"], reply["stdout"]) == ("execResponse", "fine\n"), reply


async def test_a_cell_that_writes_a_bomb_on_its_pipe_ends_with_an_error(tmp_path: Path) -> None:
    async with run_agent(tmp_path) as agent:
        cells = [
            "x = 41",
            "n = display.__self__._proto.write('[' * 200_000 + '\\n')",
            "n = display.__self__._proto.write('not json\\n')",
            "x + 1",
        ]
        answers = []
        for n, code in enumerate(cells):
            await agent.send({"id": n, "type": "runCode", "code": code})
            while (message := await agent.receive(timeout=30))["type"] == "codeResult":
                answers.append(message["result"]["text"])
            assert message["type"] == "runCodeResponse", message
            answers.append(message["error"] and message["error"]["value"])
        assert answers[0] is None
        assert "nested deeper" in answers[1]
        assert answers[2] is None  # stray text, dropped quietly (a JS child's output)
        assert answers[3:] == ["42", None]
