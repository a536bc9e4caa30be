"""The tags flow's store: the tagged members kept as rows (moved from today's kv JSON on upgrade), and a run's
candidates walked in chunks in the flow's order."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.state import Database
from crmsync.state import queries as q
from crmsync.state.migrations import MIGRATIONS, _statements

TAGGED_MEMBERS = next(i for i, m in enumerate(MIGRATIONS) if "efficy_tagged_members" in m) + 1


def _store_before_tagged_members(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:TAGGED_MEMBERS - 1], start=1):
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.executemany("INSERT INTO kv (integration, key, value) VALUES (?, ?, ?)", [
        ("ea", "tag_members:usercreated.tags.vip", json.dumps(["2", "10", "7"])),
        ("ea", "tag_members:usercreated.tags.prospect", json.dumps([])),
        ("other", "tag_members:usercreated.tags.vip", json.dumps(["99"])),
        ("ea", "merge_refused:5", "409"),
    ])
    conn.close()


async def test_an_upgraded_store_keeps_the_members_it_tagged(tmp_path: Path) -> None:
    """Issue 8 item 1: the kv ``tag_members:{tag}`` JSON lists move into the table, so an upgraded daemon still
    untags the contacts that leave a query; the kv rows go, other kv rows stay."""
    _store_before_tagged_members(tmp_path / "s.db")
    db = await Database.open(tmp_path / "s.db")
    assert await db.tx(store.get_members, "ea", "usercreated.tags.vip") == {"2", "10", "7"}
    assert await db.tx(store.get_members, "ea", "usercreated.tags.prospect") == set()
    assert await db.tx(store.get_members, "other", "usercreated.tags.vip") == {"99"}
    assert await db.tx(q.kv_get, "ea", "tag_members:usercreated.tags.vip") is None
    assert await db.tx(q.kv_get, "other", "tag_members:usercreated.tags.vip") is None
    assert await db.tx(q.kv_get, "ea", "merge_refused:5") == "409"
    await db.aclose()


async def test_candidates_are_members_then_those_tagged_before_walked_in_id_order(tmp_path: Path) -> None:
    """Candidates = members UNION previously tagged, in the order ``(len(id), id)`` (numeric for digit ids),
    each once, whatever the page size; a member is flagged as one even if it was tagged before."""
    db = await Database.open(tmp_path / "s.db")
    run_id = await db.tx(q.start_run, "ea", "tags", "schedule", "2026-11-30T00:00:00+00:00")
    await db.tx(store.record_tagged("ea", "vip", ["100", "9", "31"], []))
    await db.tx(store.record_tagged("ea", "other", ["5"], []))
    members = ["31", "1000", "2", "31", "11", "2"]  # repeats, as the packed stream may carry
    count = await db.tx(store.stage_tag_candidates(run_id, "ea", "vip", iter(members)))
    assert count == 4
    expected = [(1, "2", True), (1, "9", False), (2, "11", True), (2, "31", True), (3, "100", False),
                (4, "1000", True)]
    for limit in (1, 2, 4, 500):
        after, walked = store.CANDIDATES_START, []
        while page := await db.tx(store.tag_candidates_page, run_id, "ea", "vip", after, limit):
            assert len(page) <= limit
            walked += page
            after = page[-1][:2]
        assert walked == expected
    await db.tx(store.drop_tag_candidates(run_id, "ea", "vip"))
    assert await db.tx(store.tag_candidates_page, run_id, "ea", "vip", store.CANDIDATES_START, 10) == []
    await db.aclose()


async def test_tagged_members_are_added_and_removed_per_tag(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db")
    await db.tx(store.record_tagged("ea", "vip", ["1", "2", "3"], []))
    await db.tx(store.record_tagged("ea", "prospect", ["1"], []))
    await db.tx(store.record_tagged("ea", "vip", ["4", "2"], ["1", "3", "8"]))
    assert await db.tx(store.get_members, "ea", "vip") == {"2", "4"}
    assert await db.tx(store.count_tagged, "ea", "vip") == 2
    assert await db.tx(store.get_members, "ea", "prospect") == {"1"}
    await db.aclose()


async def test_candidates_left_by_a_run_that_stopped_are_dropped_by_the_next(tmp_path: Path) -> None:
    """A run that stopped midway (crash, error) leaves its candidates; the next run's staging removes them, so
    the scratch table does not grow run after run."""
    db = await Database.open(tmp_path / "s.db")
    first = await db.tx(q.start_run, "ea", "tags", "schedule", "2026-11-30T00:00:00+00:00")
    await db.tx(store.stage_tag_candidates(first, "ea", "vip", ["1", "2"]))
    await db.tx(q.finish_run, first, "failed", {}, "boom", "2026-11-30T00:01:00+00:00")
    second = await db.tx(q.start_run, "ea", "tags", "schedule", "2026-11-30T00:02:00+00:00")
    await db.tx(store.stage_tag_candidates(second, "ea", "other", ["3"]))
    assert await db.tx(store.tag_candidates_page, first, "ea", "vip", store.CANDIDATES_START, 10) == []
    assert await db.tx(store.tag_candidates_page, second, "ea", "other", store.CANDIDATES_START, 10) == [
        (1, "3", True)]
    await db.aclose()
