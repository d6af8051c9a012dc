"""The operations layer's pure parts: the event log (resume, gaps, tenants), webhook signing
and delivery against a receiver on this machine's loopback, the JSON log format, and the
tenants file's webhooks. tests/e2e/test_operations.py drives them through a real server."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from insien.operations import events
from insien.operations.events import Event, EventLog, Gap
from insien.operations.logs import JsonFormatter, request_id, sandbox_id
from insien.operations.webhooks import DeliveryPolicy, Webhook, Webhooks, sign
from insien.tenancy.tenants import load_tenants_file
from tests.e2e.upstreams import webhook_receiver


async def take(follow: Any, n: int) -> list[Any]:
    out: list[Any] = []
    with trio.fail_after(5):
        while len(out) < n:
            out.append(await follow.__anext__())
    return out


async def test_followers_see_their_own_tenants_events_from_where_they_left() -> None:
    log = EventLog(kept=100)
    async with aclosing(log.follow("a")) as mine:
        log.publish(events.CREATED, "a", "s1")
        log.publish(events.CREATED, "b", "s2")
        log.publish(events.ENDED, "a", "s1", reason="destroyed")
        first, second = await take(mine, 2)
    assert [(e.type, e.sandbox_id) for e in (first, second)] == [
        (events.CREATED, "s1"),
        (events.ENDED, "s1"),
    ]
    assert second.to_json()["details"] == {"reason": "destroyed"}
    async with aclosing(log.follow("a", first.id)) as resumed:  # Last-Event-ID: after it
        assert [e.id for e in await take(resumed, 1)] == [second.id]
    async with aclosing(log.follow("a", "0badc0de-1")) as other_run:  # an earlier run's id
        assert [e.id for e in await take(other_run, 2)] == [first.id, second.id]


async def test_a_follower_behind_the_bound_is_told_of_the_gap() -> None:
    log = EventLog(kept=100)
    first = log.publish(events.CREATED, "a", "s0")
    for i in range(150):
        log.publish(events.CREATED, "a", f"s{i + 1}")
    async with aclosing(log.follow("a", first.id)) as behind:
        gap, oldest = await take(behind, 2)
    assert gap == Gap(missed=50)  # s1 to s50
    assert isinstance(oldest, Event)
    assert oldest.sandbox_id == "s51"  # the oldest of the 100 kept


async def test_a_quiet_stream_gets_keep_alives(autojump_clock: trio.testing.MockClock) -> None:
    log = EventLog(kept=100)
    async with aclosing(log.follow("a", idle=3)) as follow:
        assert await take(follow, 1) == [None]
        log.publish(events.PAUSED, "a", "s")
        (event,) = await take(follow, 1)
    assert isinstance(event, Event)


class TaskSteps(trio.abc.Instrument):
    """How many times each task has been run: a follower that is not woken is not run."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_another_tenants_publishes_never_wake_a_follower() -> None:
    """Issue 27 (V4): B's flood of events runs only B's followers; A's sleeps through it and
    wakes once for its own event."""
    log = EventLog(kept=1000)
    seen: list[Event | Gap | None] = []
    follower: list[trio.lowlevel.Task] = []

    async def follow_a(task_status: trio.TaskStatus[None]) -> None:
        follower.append(trio.lowlevel.current_task())
        async with aclosing(log.follow("a")) as mine:
            task_status.started()
            async for item in mine:
                seen.append(item)

    counter = TaskSteps()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(follow_a)
            await trio.testing.wait_all_tasks_blocked()
            before = counter.steps[follower[0]]
            for i in range(500):
                log.publish(events.QUOTA_REFUSED, "b", None, reason="sandboxes")
                if i % 50 == 0:
                    await trio.testing.wait_all_tasks_blocked()  # give a woken task its turn
            await trio.testing.wait_all_tasks_blocked()
            assert counter.steps[follower[0]] == before  # not once
            mine = log.publish(events.CREATED, "a", "s1")
            await trio.testing.wait_all_tasks_blocked()
            assert counter.steps[follower[0]] == before + 1
            assert seen == [mine]
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)


async def test_a_flood_of_one_tenant_evicts_only_its_own_history() -> None:
    """Issue 27 (V4): B publishing far past the bound keeps A's history whole (A resumes with
    no gap), B holds at most its share, and all of it stays within the total."""
    log = EventLog(kept=1000)  # 100 per tenant
    assert log.per_tenant == 100
    first, *rest = [log.publish(events.CREATED, "a", f"s{i}") for i in range(40)]
    for _ in range(5000):
        log.publish(events.QUOTA_REFUSED, "b", None, reason="sandboxes")
    assert (log.kept_for("a"), log.kept_for("b")) == (40, 100)
    async with aclosing(log.follow("a", first.id)) as resumed:
        assert await take(resumed, 39) == rest  # no Gap first
    async with aclosing(log.follow("b", "x-1")) as behind:
        assert await take(behind, 1) == [Gap(missed=4900)]  # B's own, and only B is told


async def test_many_tenants_stay_within_the_total_and_a_quiet_one_keeps_its_share() -> None:
    """The total bound holds however many tenants publish: the fullest give up their oldest
    first, so a tenant with fewer than its fair share (kept / tenants) loses none."""
    log = EventLog(kept=1000, per_tenant=100)
    quiet = [log.publish(events.CREATED, "quiet", f"s{i}") for i in range(5)]
    for round_ in range(200):
        for tenant in range(30):
            log.publish(events.QUOTA_REFUSED, f"busy{tenant}", None, n=round_)
    assert log.held == 1000
    assert log.kept_for("quiet") == 5
    assert all(log.kept_for(f"busy{t}") in (33, 34) for t in range(30))  # shared out evenly
    async with aclosing(log.follow("quiet", "x-0")) as mine:
        assert await take(mine, 5) == quiet


async def test_event_ids_count_each_tenants_own_events() -> None:
    """Issue 27 (W6): a tenant's ids go 1, 2, 3 whatever others publish in between, so they
    say nothing about anyone else's activity; `Last-Event-ID` resumes in the tenant's own
    sequence."""
    log = EventLog(kept=1000)
    a1 = log.publish(events.CREATED, "a", "s1")
    b_ids = [log.publish(events.QUOTA_REFUSED, "b", None).id for _ in range(7)]
    a2 = log.publish(events.READY, "a", "s1")
    a3 = log.publish(events.ENDED, "a", "s1")
    assert [e.id for e in (a1, a2, a3)] == [f"{log.epoch}-{n}" for n in (1, 2, 3)]
    assert b_ids == [f"{log.epoch}-{n}" for n in range(1, 8)]
    assert log.published == 10  # the metric still counts everyone's
    async with aclosing(log.follow("a", a1.id)) as resumed:
        assert await take(resumed, 2) == [a2, a3]
    # An id past the tenant's own count (another tenant's, say): from the tenant's now on.
    async with aclosing(log.follow("a", f"{log.epoch}-7")) as later:
        a4 = log.publish(events.CREATED, "a", "s2")
        assert await take(later, 1) == [a4]


def test_signatures_verify_as_the_docs_say() -> None:
    body = b'{"id": "x-1"}'
    header = sign("s3cret-s3cret-s3cret", 1700000000, body)
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(b"s3cret-s3cret-s3cret", b"1700000000." + body, hashlib.sha256)
    assert parts == {"t": "1700000000", "v1": expected.hexdigest()}


async def test_deliveries_retry_in_order_and_give_up_within_their_window() -> None:
    """A receiver that answers 500 twice then 200 gets every event of a sandbox, in order, with
    a valid signature; one that never answers is given up after the window, and a full queue
    drops."""
    secret = "0123456789abcdef"
    with webhook_receiver(fail_first=2) as receiver:
        hook = Webhook(receiver.url, secret)
        policy = DeliveryPolicy(timeout=1, retry_for=10, first_delay=0.05, queue=100)
        hooks = Webhooks(lambda tenant: [hook] if tenant == "a" else [], policy)
        log = EventLog()
        log.subscribe(hooks.offer)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            kinds = [events.CREATED, events.READY, events.PAUSED, events.RESUMED, events.ENDED]
            sent = [log.publish(kind, "a", "s") for kind in kinds]
            log.publish(events.CREATED, "b", "not-theirs")
            with trio.fail_after(10):
                while hooks.counters.delivered < 5:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            hooks.close()
        got = receiver.delivered()
        assert [json.loads(body)["id"] for _, body in got] == [e.id for e in sent]
        for headers, body in got:
            timestamp, mac = (p.split("=", 1)[1] for p in headers["insien-signature"].split(","))
            assert hmac.compare_digest(
                mac,
                hmac.new(secret.encode(), f"{timestamp}.".encode() + body, "sha256").hexdigest(),
            )
        assert hooks.counters.retried >= 2
        assert receiver.attempts == 7

    with webhook_receiver(hang=True) as silent:
        hook = Webhook(silent.url, secret)
        policy = DeliveryPolicy(timeout=0.2, retry_for=0.6, first_delay=0.05, queue=3)
        hooks = Webhooks(lambda tenant: [hook], policy)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            for i in range(4):  # one being sent and two waiting (the bound), one over it
                hooks.offer(Event(i + 1, "e", events.ENDED, "a", f"s{i}"))
                await trio.lowlevel.checkpoint()
            with trio.fail_after(20):
                while hooks.counters.failed < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            hooks.close()
        assert hooks.counters.dropped == 1
        assert hooks.counters.delivered == 0


async def test_a_sandbox_whose_events_are_refused_holds_back_only_its_own() -> None:
    """Per-sandbox lanes: while the receiver refuses one sandbox's events, other sandboxes'
    are delivered; once it takes them, that sandbox's arrive in the order they happened."""
    with webhook_receiver() as receiver:
        receiver.refused.add("stuck")
        hook = Webhook(receiver.url, "0123456789abcdef")
        policy = DeliveryPolicy(timeout=1, retry_for=30, first_delay=0.05, max_delay=0.2)
        hooks = Webhooks(lambda tenant: [hook], policy)
        log = EventLog()
        log.subscribe(hooks.offer)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            stuck = [log.publish(kind, "a", "stuck") for kind in (events.CREATED, events.ENDED)]
            others = [log.publish(events.CREATED, "a", f"s{i}") for i in range(6)]
            with trio.fail_after(10):
                while hooks.counters.delivered < len(others):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert hooks.counters.retried >= 1  # "stuck" was tried, and is being retried
            delivered = [json.loads(body)["id"] for _, body in receiver.delivered()]
            assert sorted(delivered) == sorted(e.id for e in others)
            receiver.refused.clear()
            with trio.fail_after(10):
                while hooks.pending():  # noqa: ASYNC110
                    await trio.sleep(0.02)
            hooks.close()
        delivered = [json.loads(body)["id"] for _, body in receiver.delivered()]
        assert delivered[len(others) :] == [e.id for e in stuck]


def test_json_log_lines_carry_the_request_context() -> None:
    record = logging.LogRecord("insien.test", logging.INFO, __file__, 1, "made %s", ("x",), None)
    request_id.set("req-1")
    sandbox_id.set("sbx-1")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "made x"
    assert (line["level"], line["logger"]) == ("info", "insien.test")
    assert (line["requestId"], line["sandboxId"]) == ("req-1", "sbx-1")
    assert "tenant" not in line


def test_webhooks_in_the_tenants_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        '[tenants.default]\nwebhooks = [{ url = "http://127.0.0.1:9/h", secret = "'
        + "x" * 16
        + '", events = ["sandbox.ended"] }]\n'
    )
    (entry,) = load_tenants_file(path).tenants["default"].webhooks
    assert entry.webhook().wants("sandbox.ended")
    assert not entry.webhook().wants("sandbox.created")
    assert "x" * 16 not in repr(entry.webhook())  # secrets stay out of reprs (and logs)
    for bad in (
        'webhooks = [{ url = "ftp://h/x", secret = "' + "x" * 16 + '" }]',
        'webhooks = [{ url = "http://h/x", secret = "short" }]',
        'webhooks = [{ url = "http://h/x", secret = "' + "x" * 16 + '", events = ["nope"] }]',
    ):
        path.write_text(f"[tenants.acme]\n{bad}\n")
        with pytest.raises(ValueError, match="tenants file"):
            load_tenants_file(path)
