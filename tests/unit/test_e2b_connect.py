"""The Connect codec and the E2B routing rules, as pure functions."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncGenerator

import pytest

from insien.api.e2b.connect import (
    FLAG_END_STREAM,
    Code,
    ConnectError,
    end_stream,
    envelope,
    is_stream_type,
    parse_stream_request,
    parse_unary,
    timeout_seconds,
)
from insien.api.e2b.files import _boundary, _inflate
from insien.api.e2b.filesystem import entry_info, permissions
from insien.api.e2b.process import decode_bytes, end_event
from insien.api.router import host_route as _host_route


def _unpack(data: bytes) -> list[tuple[int, dict[str, object]]]:
    frames = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        frames.append((flags, json.loads(data[5 : 5 + length])))
        data = data[5 + length :]
    return frames


def test_envelopes_round_trip() -> None:
    body = envelope({"event": {"start": {"pid": 7}}}) + end_stream()
    assert _unpack(body) == [(0, {"event": {"start": {"pid": 7}}}), (FLAG_END_STREAM, {})]
    failed = _unpack(end_stream(ConnectError(Code.NOT_FOUND, "no such process")))
    assert failed == [
        (FLAG_END_STREAM, {"error": {"code": "not_found", "message": "no such process"}})
    ]
    assert parse_stream_request(envelope({"process": {"pid": 3}})) == {"process": {"pid": 3}}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x00\x00",
        b"\x01\x00\x00\x00\x02{}",  # compressed
        b"\x02\x00\x00\x00\x02{}",  # an end frame is no request
        b"\x00\x00\x00\x00\x05{}",  # shorter than it says
        b"\x00\x00\x00\x00\x02{}extra",
        b"\x00\x00\x00\x00\x02[]",
    ],
)
def test_bad_stream_requests_are_refused(body: bytes) -> None:
    with pytest.raises(ConnectError):
        parse_stream_request(body)


def test_unary_bodies() -> None:
    assert parse_unary(b"") == {}
    assert parse_unary(b'{"path": "/x"}') == {"path": "/x"}
    for bad in (b"{", b"[1]", b"\xff"):
        with pytest.raises(ConnectError) as refused:
            parse_unary(bad)
        assert refused.value.code is Code.INVALID_ARGUMENT


def test_timeouts_and_content_types() -> None:
    assert timeout_seconds(None) is None
    assert timeout_seconds("1500") == 1.5
    for bad in ("", "-1", "1.5", "12345678901", "\uff11\uff12"):
        with pytest.raises(ConnectError):
            timeout_seconds(bad)
    assert is_stream_type("application/connect+json; charset=utf-8")
    assert not is_stream_type("application/json")


def test_host_routing() -> None:
    assert _host_route("49983-abc_1.sbx.example.com", "sbx.example.com") == ("abc_1", 49983)
    # a domain named without a port matches its hosts on any port; one with a port, only there
    assert _host_route("49983-ABC.SBX.example.com:80", "sbx.example.com") == ("abc", 49983)
    assert _host_route("8000-abc.localhost:3000", "localhost") == ("abc", 8000)
    assert _host_route("8000-abc.localhost:3000", "localhost:3000") == ("abc", 8000)
    assert _host_route("8000-abc.localhost:3001", "localhost:3000") is None
    assert _host_route("api.sbx.example.com", "sbx.example.com") is None
    assert _host_route("49983-abc.other.com", "sbx.example.com") is None
    assert _host_route("x-abc.sbx.example.com", "sbx.example.com") is None


def test_translations() -> None:
    assert decode_bytes("aGk") == b"hi"
    assert decode_bytes("-_8=") == b"\xfb\xff"
    assert end_event({"exitCode": 3}) == {
        "event": {"end": {"exitCode": 3, "exited": True, "status": "exit status 3"}}
    }
    killed = end_event({"exitCode": 137, "signal": "SIGKILL", "oom": True})["event"]["end"]
    assert (killed["exitCode"], killed["exited"], killed["status"]) == (-1, False, "signal: killed")
    assert "memory" in killed["error"]
    info = entry_info(
        {
            "name": "l",
            "path": "/l",
            "type": "symlink",
            "size": 4,
            "mode": 0o777,
            "mtime": 0,
            "owner": "user",
            "group": "user",
            "target": "/etc",
            "resolved": {"path": "/etc", "type": "dir", "mode": 0o755},
        }
    )
    # a link is described by where it leads, as envd does; its own permissions stay its own
    assert info["type"] == "FILE_TYPE_DIRECTORY"
    assert info["mode"] == 0o755
    assert info["permissions"] == permissions("symlink", 0o777)
    assert info["size"] == "4"
    assert info["modifiedTime"] == "1970-01-01T00:00:00Z"
    assert info["symlinkTarget"] == "/etc"
    dangling = entry_info({"name": "d", "path": "/d", "type": "symlink", "mode": 0o777})
    assert (dangling["type"], dangling["mode"], dangling["symlinkTarget"]) == (
        "FILE_TYPE_UNSPECIFIED",
        0,
        "/d",
    )


def test_multipart_boundary() -> None:
    assert _boundary('multipart/form-data; boundary="abc"') == b"abc"
    with pytest.raises(Exception, match="boundary"):
        _boundary("multipart/form-data")


async def test_gzip_bodies_are_bounded() -> None:
    import gzip

    from insien.api.e2b.files import FilesError

    async def body(data: bytes) -> AsyncGenerator[bytes, None]:
        yield data

    bomb = gzip.compress(b"\0" * (5 * 1024 * 1024))
    with pytest.raises(FilesError):
        async for _ in _inflate(body(bomb), 1024 * 1024):
            pass
    out = b"".join([c async for c in _inflate(body(gzip.compress(b"ok" * 10)), 100)])
    assert out == b"ok" * 10


async def test_client_streams_are_read_envelope_by_envelope() -> None:
    from insien.api.e2b.connect import MAX_REQUEST_BYTES, read_stream

    body = envelope({"n": 1}) + envelope({"n": 2}) + end_stream() + envelope({"n": 3})

    async def pieces(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
        for at in range(0, len(data), size):
            yield data[at : at + size]

    for size in (1, 3, 7, len(body)):
        assert [m async for m in read_stream(pieces(body, size))] == [{"n": 1}, {"n": 2}]
    with pytest.raises(ConnectError):
        [m async for m in read_stream(pieces(envelope({"n": 1})[:-1], 4))]
    huge = struct.pack(">BI", 0, MAX_REQUEST_BYTES + 1)
    with pytest.raises(ConnectError) as refused:
        [m async for m in read_stream(pieces(huge, 5))]
    assert refused.value.code is Code.RESOURCE_EXHAUSTED
