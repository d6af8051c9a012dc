"""Validation of client messages against the one protocol definition."""

from __future__ import annotations

from typing import Any

import pytest

from insien.protocol import ErrorCode, ProtocolError, parse_request


def refused(raw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    return info.value


def test_seed_messages_pass_unchanged() -> None:
    exec_ = {"id": "u1", "type": "exec", "cmd": "node", "args": ["--version"]}
    write = {"id": "u2", "type": "write", "path": "hello.js", "content": "x"}
    read = {"id": 3, "type": "read", "path": "hello.js"}
    assert parse_request(exec_) == exec_
    assert parse_request(write) == write
    assert parse_request(read) == read


def test_unknown_fields_pass_through() -> None:
    assert parse_request({"id": 1, "type": "read", "path": "a", "future": True})["future"] is True


@pytest.mark.parametrize("raw", [[], "x", 3, None])
def test_non_objects(raw: Any) -> None:
    error = refused(raw)
    assert (error.request_id, error.code) == (None, ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize("bad_id", [None, True, 1.5, [1], {"a": 1}])
def test_bad_ids(bad_id: Any) -> None:
    assert refused({"id": bad_id, "type": "read", "path": "a"}).code is ErrorCode.BAD_REQUEST


def test_unknown_type_keeps_the_id() -> None:
    error = refused({"id": "x", "type": "frobnicate"})
    assert (error.request_id, error.code) == ("x", ErrorCode.UNKNOWN_TYPE)


@pytest.mark.parametrize(
    "raw",
    [
        {"id": 1, "type": "exec"},
        {"id": 1, "type": "exec", "cmd": ""},
        {"id": 1, "type": "exec", "cmd": "ls", "args": "-la"},
        {"id": 1, "type": "exec", "cmd": "ls", "args": [1]},
        {"id": 1, "type": "exec", "cmd": "ls", "env": {"A": 1}},
        {"id": 1, "type": "write", "path": "a"},
        {"id": 1, "type": "write", "path": "a", "content": 5},
        {"id": 1, "type": "write", "path": "a", "content": "x", "encoding": "rot13"},
        {"id": 1, "type": "read"},
        {"id": 1, "type": "read", "path": ["a"]},
    ],
)
def test_mistyped_or_missing_fields(raw: dict[str, Any]) -> None:
    error = refused(raw)
    assert (error.request_id, error.code) == (1, ErrorCode.BAD_REQUEST)
    assert error.message.startswith("field ")
