"""The agent's cgroup counters (agent/insien_agent/usage.py), which the server uses where the
runtime has no stats: both cgroup layouts, read from a made-up tree, and the server's parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from insien.sandboxes.usage import agent_counters
from insien_agent import usage


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory pids",
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
            "cpu.max": "50000 100000",
            "memory.current": "10485760",
            "memory.stat": "anon 100\ninactive_file 1048576\n",
            "memory.max": "268435456",
            "pids.current": "7",
        },
    )
    monkeypatch.setattr(usage, "CGROUP", tmp_path)
    counters = usage.cgroup_counters()
    assert counters == {
        "cpuSeconds": 2.5,
        "cpus": 0.5,
        "memoryUsed": 10485760 - 1048576,
        "memoryLimit": 268435456,
        "memoryCache": 1048576,
        "pids": 7,
    }
    parsed = agent_counters({"cgroup": counters})
    assert parsed is not None
    assert (parsed.cpu_seconds, parsed.memory_used, parsed.pids) == (2.5, 9437184, 7)


def test_cgroup_v1_without_a_cpu_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path,
        {
            "cpuacct/cpuacct.usage": "1500000000",
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.usage_in_bytes": "2000",
            "memory/memory.stat": "cache 900\ninactive_file 500\n",
            "memory/memory.limit_in_bytes": "4000",
            "pids/pids.current": "3",
        },
    )
    monkeypatch.setattr(usage, "CGROUP", tmp_path)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert usage.cgroup_counters() == {
        "cpuSeconds": 1.5,
        "cpus": 4.0,
        "memoryUsed": 1500,
        "memoryLimit": 4000,
        "memoryCache": 500,
        "pids": 3,
    }


def test_no_cgroup_and_bad_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "CGROUP", tmp_path)
    assert usage.cgroup_counters() is None
    assert agent_counters({}) is None
    assert agent_counters({"cgroup": None}) is None
    assert agent_counters({"cgroup": {"cpuSeconds": "x"}}) is None
