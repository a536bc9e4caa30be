"""The store: migrations, one-hop transactions under cancellation, queue dedupe, links, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from crmsync.state import Database, ReportRow
from crmsync.state import queries as q
from crmsync.state.migrations import MIGRATIONS


async def test_migrations_apply_once_and_record_version(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    await db.aclose()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    db = await Database.open(tmp_path / "s.db")  # re-opening applies nothing twice
    await db.aclose()


async def test_a_failing_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")

    def half(c: sqlite3.Connection) -> None:
        q.set_cursor(c, "a", "f", "1", "now")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.tx(half)
    assert await db.tx(q.get_cursor, "a", "f") is None
    await db.aclose()


async def test_cancelling_a_long_transaction_rolls_it_back(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")

    def slow(c: sqlite3.Connection) -> None:
        q.set_cursor(c, "a", "f", "written", "now")
        c.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 30000000) "
                  "SELECT count(*) FROM n").fetchone()

    with trio.move_on_after(0.2) as scope:
        await db.tx(slow)
    assert scope.cancelled_caught
    assert await db.tx(q.get_cursor, "a", "f") is None  # interrupted and rolled back, never half-committed
    await db.tx(q.set_cursor, "a", "f", "ok", "now")  # and the connection is usable
    assert await db.tx(q.get_cursor, "a", "f") == "ok"
    await db.aclose()


async def test_queue_is_ordered_deduplicated_and_replay_safe(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    n = await db.tx(q.enqueue, "a", [("k1", {"n": 1}), ("k2", {"n": 2}), ("k1", {"n": 1}), (None, {"n": 3})], "t0")
    assert n == 3
    events = await db.tx(q.peek_pending, "a", 10)
    assert [e.payload["n"] for e in events] == [1, 2, 3]
    await db.tx(q.ack_queue, "a", [events[0].seq, events[2].seq])
    assert await db.tx(q.queue_depth, "a") == 1
    # a replay of an already processed event is still recognised
    assert await db.tx(q.enqueue, "a", [("k1", {"n": 1})], "t1") == 0
    assert [e.payload["n"] for e in await db.tx(q.peek_pending, "a", 10)] == [2]
    await db.aclose()


async def test_links_are_one_to_one(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    await db.tx(q.put_link, "a", "van1", "mc1", "t")
    await db.tx(q.put_link, "a", "van2", "mc1", "t")  # mc1 now belongs to van2
    assert await db.tx(q.link_for_crm, "a", "van1") is None
    assert await db.tx(q.link_for_messaging, "a", "mc1") == "van2"
    await db.tx(q.put_link, "a", "van2", "mc9", "t")
    assert await db.tx(q.link_for_crm, "a", "van2") == "mc9"
    assert await db.tx(q.count_links, "a") == 1
    await db.aclose()


async def test_runs_and_report_rows_are_pruned_by_age_and_count(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    ids = []
    for day in range(1, 7):
        run_id = await db.tx(q.start_run, "a", "f", "test", f"2026-01-0{day}T00:00:00+00:00")
        await db.tx(q.add_report_rows, run_id, [ReportRow("created", "1", "2")], "t")
        await db.tx(q.finish_run, run_id, "success", {}, None, f"2026-01-0{day}T01:00:00+00:00")
        ids.append(run_id)
    other = await db.tx(q.start_run, "a", "g", "test", "2026-01-01T00:00:00+00:00")
    await db.tx(q.finish_run, other, "success", {}, None, "2026-01-01T01:00:00+00:00")
    assert await db.tx(q.prune, "a", "f", "2026-01-02T12:00:00+00:00", 3) == 3
    kept = [rid for rid in ids if await db.tx(q.get_run, rid)]
    assert kept == ids[3:]  # older than the cut-off, or beyond the newest 3: gone with their rows
    assert await db.tx(q.count_report_rows, ids[0]) == 0 and await db.tx(q.count_report_rows, ids[-1]) == 1
    assert await db.tx(q.get_run, other) is not None  # another flow is untouched
    # everything old: the latest run stays, so status can still show it
    assert await db.tx(q.prune, "a", "f", "2027-01-01T00:00:00+00:00", 3) == 2
    assert [r["id"] for r in await db.tx(q.list_runs, "a", 10, "f")] == [ids[-1]]
    await db.aclose()


async def test_interrupted_runs_are_closed_at_start(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    run_id = await db.tx(q.start_run, "a", "f", "test", "t")
    assert await db.tx(q.interrupt_running_runs, "t2") == 1
    run = await db.tx(q.get_run, run_id)
    assert run is not None and run["status"] == "cancelled" and "interrupted" in run["error"]
    await db.aclose()
