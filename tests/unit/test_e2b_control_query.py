"""The E2B control plane's query parsing and snapshot names (issue 29), without Docker: what
the SDKs send for `startedAfter`, `nextToken` and `start`/`end`, and how a snapshot's name is
matched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from insien.api.e2b.control import _cursor, _moment, _unix
from insien.api.errors import ApiError
from insien.sandboxes.snapshots import BadSnapshotName, KeptSnapshot, snapshot_name


def test_started_after_as_each_sdk_sends_it() -> None:
    wanted = datetime(2026, 12, 7, 10, 20, 0, 123000, tzinfo=UTC)
    assert _moment("2026-12-07T10:20:00.123Z", "startedAfter") == wanted  # JS: toISOString
    assert _moment("2026-12-07T10:20:00.123000+00:00", "startedAfter") == wanted  # Python
    assert _moment("2026-12-07T10:20:00.123000 00:00", "startedAfter") == wanted  # '+' as ' '
    east = _moment("2026-12-07T11:20:00.123+01:00", "startedAfter")
    assert east == wanted
    assert east is not None
    assert east.utcoffset() == timedelta(hours=1)
    assert _moment("2026-12-07T10:20:00.123", "startedAfter") == wanted  # naive is UTC
    assert _moment(None, "startedAfter") is None
    with pytest.raises(ApiError) as bad:
        _moment("yesterday", "startedAfter")
    assert bad.value.status == 400


def test_cursor_and_unix_times() -> None:
    assert _cursor("1765102800123456.0b1e-id") == (1765102800123456, "0b1e-id")
    assert _cursor(None) is None
    for bad in ("100", "abc.id", "-1.id", "12."):
        with pytest.raises(ApiError):
            _cursor(bad)
    assert _unix("1765102800", "start") == 1765102800
    assert _unix("", "start") is None
    with pytest.raises(ApiError):
        _unix("2026-12-07", "end")


def test_snapshot_names() -> None:
    assert snapshot_name("my-snap") == "my-snap:default"
    assert snapshot_name("my-snap:v2") == "my-snap:v2"
    for bad in ("", "has space", "team/name", "a:b:c", "-lead", "x" * 200):
        with pytest.raises(BadSnapshotName):
            snapshot_name(bad)

    named = KeptSnapshot("insien-snapshot:ab12", "sbx", "2026-12-07T10:00:00.000Z", 0, "snap:v1")
    assert named.matches("snap")
    assert named.matches("snap:v1")
    assert named.matches("team-slug/snap:v1")  # E2B's namespace is not Insien's
    assert named.matches("insien-snapshot:ab12")  # by id too
    assert not named.matches("snap:default")
    assert not named.matches("sna")
    anonymous = KeptSnapshot("insien-snapshot:cd34", "sbx", "2026-12-07T10:00:00.000Z", 0, None)
    assert anonymous.matches("insien-snapshot:cd34")
    assert not anonymous.matches("insien-snapshot")
    assert named.info() == {
        "template": "insien-snapshot:ab12",
        "sandboxId": "sbx",
        "createdAt": "2026-12-07T10:00:00.000Z",
        "bytes": 0,
    }
