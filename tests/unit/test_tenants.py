"""The tenants file, its reloading, key revocation, sizes, and the create-rate bucket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from insien.protocol import ErrorCode
from insien.tenancy.quotas import ConnectionCounter, CreateRateLimiter, QuotaExceeded
from insien.tenancy.resources import Resources, format_size, parse_size
from insien.tenancy.tenants import (
    RELOAD_CHECK_SECONDS,
    Plan,
    Tenant,
    TenantDirectory,
    hash_key,
    load_tenants_file,
    new_key,
)

OPERATOR_MAX = Resources(2.0, 4 << 30, 4096)


def write(path: Path, text: str) -> None:
    path.write_text(text)
    # make the change visible to the mtime check even within one clock tick
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def tenants_toml(key_a: str, key_b: str, *, revoke_b: bool = False) -> str:
    return f"""
[tenants.alpha]
max_sandboxes = 2
create_rate = 30
max_memory = "1g"
max_cpus = 8
keys = [{{ id = "a1", sha256 = "{hash_key(key_a)}" }}]

[tenants.beta]
keys = [{{ id = "b1", sha256 = "{hash_key(key_b)}", revoked = {str(revoke_b).lower()} }}]
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_directory(
    path: Path | None, api_key: str | None = "seed-key", clock: Clock | None = None
) -> TenantDirectory:
    return TenantDirectory(
        api_key=api_key,
        default_plan=Plan(max_connections=7, max_resources=OPERATOR_MAX),
        operator_max=OPERATOR_MAX,
        path=path,
        clock=clock or Clock(),
    )


def test_keys_resolve_to_their_tenants_with_plans(tmp_path: Path) -> None:
    key_a, key_b = new_key(), new_key()
    path = tmp_path / "tenants.toml"
    write(path, tenants_toml(key_a, key_b))
    directory = make_directory(path)
    alpha = directory.for_key(key_a)
    assert alpha is not None
    assert alpha.id == "alpha"
    assert alpha.plan.max_sandboxes == 2
    assert alpha.plan.create_rate == 30
    assert alpha.plan.max_connections == 7  # inherited from the operator's default plan
    # a plan narrows the operator's ceiling and never widens it (max_cpus 8 > 2)
    assert alpha.plan.max_resources == Resources(2.0, 1 << 30, 4096)
    beta = directory.for_key(key_b)
    assert beta is not None
    assert beta.id == "beta"
    assert directory.for_key("seed-key") == Tenant("default")
    for wrong in (None, "", key_a[:-1], key_a + "x", "seed-key "):
        assert directory.for_key(wrong) is None


def test_revoking_and_removing_take_effect_without_restart(tmp_path: Path) -> None:
    key_a, key_b = new_key(), new_key()
    path = tmp_path / "tenants.toml"
    write(path, tenants_toml(key_a, key_b))
    clock = Clock()
    directory = make_directory(path, clock=clock)
    assert directory.for_key(key_b) is not None
    write(path, tenants_toml(key_a, key_b, revoke_b=True))
    # The file is looked at once per RELOAD_CHECK_SECONDS, and then without fail.
    clock.now += RELOAD_CHECK_SECONDS / 2
    assert directory.for_key(key_b) is not None
    clock.now += RELOAD_CHECK_SECONDS
    assert directory.for_key(key_b) is None
    assert directory.by_id("beta") is not None  # the tenant stays; only the key went
    write(path, "[tenants.alpha]\n")
    clock.now += RELOAD_CHECK_SECONDS
    assert directory.by_id("beta") is None
    assert directory.for_key(key_a) is None


def test_a_broken_file_keeps_the_previous_tenants(tmp_path: Path) -> None:
    key_a, key_b = new_key(), new_key()
    path = tmp_path / "tenants.toml"
    write(path, tenants_toml(key_a, key_b))
    clock = Clock()
    directory = make_directory(path, clock=clock)
    write(path, "[tenants.alpha\nbroken")
    clock.now += RELOAD_CHECK_SECONDS
    assert directory.for_key(key_a) is not None


@pytest.mark.parametrize(
    "text",
    [
        "[tenants.default]\n",  # the API_KEY's id
        "[tenants.x]\nunknown = 1\n",
        '[tenants.x]\nkeys = [{ id = "k", sha256 = "not-hex" }]\n',
        '[tenants.x]\nmax_memory = "lots"\n',
        "[tenants.x]\nmax_sandboxes = -1\n",
        '[tenants."bad id!"]\n',
        f'[tenants.x]\nkeys = [{{ id = "1", sha256 = "{"a" * 64}" }}]\n'
        f'[tenants.y]\nkeys = [{{ id = "2", sha256 = "{"a" * 64}" }}]\n',
    ],
)
def test_invalid_tenants_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="tenants file"):
        load_tenants_file(path)


def test_without_api_key_only_file_keys_work(tmp_path: Path) -> None:
    directory = make_directory(None, api_key=None)
    assert directory.for_key("anything") is None
    assert directory.by_id("default") is None


def test_sizes_are_binary_like_dockers() -> None:
    assert parse_size("512m") == 512 << 20
    assert parse_size("1g") == parse_size("1GiB") == parse_size("1gb") == 1 << 30
    assert parse_size(1234) == 1234
    assert format_size(1 << 30) == "1g"
    assert format_size(1000) == "1000"
    for bad in ("", "1.5g", "-1", "12 parsecs", True):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_resources_within_a_ceiling() -> None:
    ceiling = Resources(1.0, 1 << 30, 100)
    assert Resources(1.0, 1 << 30, 100).within(ceiling) == []
    problems = Resources(2.0, 2 << 30, 101).within(ceiling)
    assert len(problems) == 3
    assert "at most 1g" in problems[1]


async def test_create_rate_bucket_allows_a_burst_then_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = CreateRateLimiter()
    tenant = Tenant("t", Plan(create_rate=60, create_burst=3))  # one a second
    for _ in range(3):
        limiter.take(tenant)
    with pytest.raises(QuotaExceeded) as refused:
        limiter.take(tenant)
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.retry_after == 1
    await trio.sleep(0.9)
    with pytest.raises(QuotaExceeded):
        limiter.take(tenant)  # not yet: a second per create
    await trio.sleep(0.15)
    limiter.take(tenant)
    limiter.take(Tenant("unlimited"))  # no rate in the plan: never limited


def test_connection_counter_caps_and_releases() -> None:
    counter = ConnectionCounter()
    tenant = Tenant("t", Plan(max_connections=2))
    counter.acquire(tenant)
    counter.acquire(tenant)
    with pytest.raises(QuotaExceeded):
        counter.acquire(tenant)
    counter.release(tenant)
    counter.acquire(tenant)
    assert counter.count("t") == 2
