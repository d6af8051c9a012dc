"""The secret store from trio code (issue 30): its disk reads and writes run in worker
threads, at most IO_THREADS at once, and concurrent changes cannot both pass a check."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from insien.secrets import store as secret_store
from insien.secrets.store import SecretExists, SecretNotFound, SecretStore, load_key

KEY = "k" * 40


def make(folder: Path) -> SecretStore:
    return SecretStore(folder, load_key(KEY, None))


async def test_disk_io_runs_in_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = threading.current_thread()
    seen: list[threading.Thread] = []
    write, read = SecretStore._write, SecretStore._read

    def watched_write(self: SecretStore, *args: object) -> None:
        seen.append(threading.current_thread())
        write(self, *args)  # type: ignore[arg-type]

    def watched_read(self: SecretStore, tenant: str) -> object:
        seen.append(threading.current_thread())
        return read(self, tenant)

    monkeypatch.setattr(SecretStore, "_write", watched_write)
    monkeypatch.setattr(SecretStore, "_read", watched_read)
    secrets = make(tmp_path)
    made = await secrets.create("t1", "TOKEN", "one", "what it is")
    assert (made.name, made.version) == ("TOKEN", 1)
    assert (await secrets.rotate("t1", "TOKEN", "two")).version == 2
    assert [s.name for s in await secrets.list("t1")] == ["TOKEN"]
    again = make(tmp_path)  # a restarted server reads the folder anew
    assert await again.info("t1", "TOKEN") is not None
    assert again.value("t1", "TOKEN") == "two"
    await again.delete("t1", "TOKEN")
    with pytest.raises(SecretNotFound):
        await again.delete("t1", "TOKEN")
    assert len(seen) == 4  # two reads (one per store), two writes
    assert here not in seen
    assert await make(tmp_path).info("t1", "TOKEN") is None  # its file is gone too


async def test_reads_are_bounded_and_changes_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = peak = 0
    lock = threading.Lock()
    read = SecretStore._read

    def slow_read(self: SecretStore, tenant: str) -> object:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        time.sleep(0.02)
        with lock:
            busy -= 1
        return read(self, tenant)

    monkeypatch.setattr(SecretStore, "_read", slow_read)
    secrets = make(tmp_path)
    async with trio.open_nursery() as nursery:
        for n in range(12):
            nursery.start_soon(secrets.load, f"tenant-{n}")
    assert peak == secret_store.IO_THREADS

    outcomes: list[str] = []

    async def create(name: str) -> None:
        try:
            await secrets.create("t1", name, "v")
            outcomes.append("made")
        except SecretExists:
            outcomes.append("exists")

    async with trio.open_nursery() as nursery:
        for name in ("Token", "TOKEN", "token"):
            nursery.start_soon(create, name)
    assert sorted(outcomes) == ["exists", "exists", "made"]
