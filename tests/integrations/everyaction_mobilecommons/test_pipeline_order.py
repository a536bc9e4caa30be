"""The pipeline's acknowledge stage: records finish out of order, are acknowledged in order, and the cursor
moves only after every record; a failure leaves the cursor where it was (issue 8: "the cursor advances only
when every record before it is acknowledged")."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from crmsync.clock import WallClock
from crmsync.connectors.errors import FatalApiError, RetriableApiError
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import PhoneTurns, Pipeline, RecordRun
from crmsync.daemon.runs import RunContext
from crmsync.state import Database
from crmsync.state import queries as q


async def _items(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
        yield i  # repeats are dropped


async def _run(db: Database) -> RunContext:
    run_id = await db.tx(q.start_run, "p", "f", "test", "2026-10-28T00:00:00+00:00")
    return RunContext(db=db, clock=WallClock(start=datetime(2026, 10, 28, tzinfo=UTC)), integration="p",
                      flow="f", run_id=run_id)


async def test_out_of_order_work_is_acknowledged_in_order_and_the_cursor_moves_last(
        autojump_clock: trio.testing.MockClock, db: Database) -> None:
    rng = random.Random(7)
    committed: list[int] = []

    async def handle(seq: int, item: int, record: RecordRun) -> list:  # type: ignore[type-arg]
        await trio.sleep(rng.random())  # finish out of order
        if item == 5:
            raise FatalApiError("everyaction", "refused")
        record.record("updated", crm_id=str(item))
        return [lambda c, i=item: committed.append(i)]

    run = await _run(db)
    pipeline = Pipeline[int](run=run, handle=handle, ids=lambda i: {"crm_id": str(i)}, key=lambda i: i,
                             workers=6, group=4)
    await pipeline.run_all(_items(20), lambda: [lambda c: q.set_cursor(c, "p", "f", "end", "now")])
    assert committed == [i for i in range(20) if i != 5]  # writes committed in source order
    rows = await db.tx(q.report_rows, 1, 100, 0)
    assert [r["crm_id"] for r in rows] == [str(i) for i in range(20)]
    assert rows[5]["outcome"] == "rejected" and rows[5]["message"] == "refused"
    assert run.counts.fetched == 20
    assert await db.tx(q.get_cursor, "p", "f") == "end"


async def test_a_failure_ends_the_run_with_that_error_and_the_cursor_stays(
        autojump_clock: trio.testing.MockClock, db: Database) -> None:
    async def handle(seq: int, item: int, record: RecordRun) -> list:  # type: ignore[type-arg]
        await trio.sleep(0.1 * (item % 3))
        if item == 9:
            raise RetriableApiError("mobilecommons", "HTTP 503 after retries")
        record.record("updated", crm_id=str(item))
        return []

    pipeline = Pipeline[int](run=await _run(db), handle=handle, ids=lambda i: {"crm_id": str(i)}, key=lambda i: i,
                             workers=4, group=2)
    with pytest.raises(RetriableApiError):  # the error itself, not an ExceptionGroup
        await pipeline.run_all(_items(30), lambda: [lambda c: q.set_cursor(c, "p", "f", "end", "now")])
    assert await db.tx(q.get_cursor, "p", "f") is None
    rows = await db.tx(q.report_rows, 1, 100, 0)
    assert [r["crm_id"] for r in rows] == [str(i) for i in range(len(rows))]  # a prefix, in order
    assert len(rows) <= 9


async def test_records_sharing_a_phone_take_turns_in_source_order(autojump_clock: trio.testing.MockClock) -> None:
    turns = PhoneTurns()
    order: list[int] = []

    async def worker(seq: int, phone: str, read_delay: float) -> None:
        await trio.sleep(read_delay)  # reading the person: the later record may finish first
        turns.register(seq, phone)
        await turns.wait_turn(seq, phone)
        order.append(seq)
        await trio.sleep(1)
        turns.release(seq, phone)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, 0, "+13125550100", 3.0)
        nursery.start_soon(worker, 1, "+13125550199", 0.0)
        nursery.start_soon(worker, 2, "+13125550100", 0.5)
    assert order.index(0) < order.index(2)


async def test_phone_turns_keep_source_order_per_phone_under_any_timing(
        autojump_clock: trio.testing.MockClock) -> None:
    """The order rule with many records in progress: per phone, records write one at a time and in source
    order, whatever the order their persons are read in; records without a phone never wait; none is stuck."""
    rng = random.Random(11)
    turns = PhoneTurns()
    phones = [None if rng.random() < 0.2 else f"+1312555{rng.randrange(5):04d}" for _ in range(120)]
    entered: dict[str, list[int]] = {}
    writing: set[str] = set()
    done: list[int] = []

    async def record(seq: int, phone: str | None) -> None:
        await trio.sleep(rng.random())  # the person read: any order
        turns.register(seq, phone)
        if phone is not None:
            await turns.wait_turn(seq, phone)
            assert phone not in writing  # one write at a time per phone
            writing.add(phone)
            entered.setdefault(phone, []).append(seq)
            await trio.sleep(rng.random())
            writing.discard(phone)
            turns.release(seq, phone)
        done.append(seq)

    async with trio.open_nursery() as nursery:
        for seq, phone in enumerate(phones):
            nursery.start_soon(record, seq, phone)
    assert sorted(done) == list(range(len(phones)))
    assert all(order == sorted(order) for order in entered.values())
    assert sum(len(order) for order in entered.values()) == sum(p is not None for p in phones)
