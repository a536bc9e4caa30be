"""Issue 7 item 12: "A full sync after `cancel` says what it will do. Resume from the checkpoint by default when
the mappings are unchanged, `full-sync NAME --from-start` to start over, and `status` says which the next start
will do." (Today it silently starts from zero.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from crmsync.clock import WallClock
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config, start_supervisor
from tests.fake_kind import world


def _fifty_records_ten_seconds_a_page(tmp_path: Path) -> tuple[Any, Any]:
    """Integration "a": 50 records, pages of 10, each page taking 10 s to read."""
    w = world("a")
    w.source.page_delay = 10.0
    return fake_config(tmp_path, {"a": {"records": 50, "page_size": 10}}), w


async def _cancel_after_two_pages(supervisor: Any, db: Database) -> None:
    await supervisor.activate("a")
    await supervisor.full_sync("a")
    await trio.sleep(25)  # two pages acknowledged, the third in progress
    await supervisor.cancel("a")
    fs = await db.tx(q.get_full_sync, "a")
    assert fs is not None and fs["state"] == "cancelled" and fs["position"] == "20"


async def test_full_sync_after_cancel_resumes_from_the_checkpoint_when_mappings_are_unchanged(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config, w = _fifty_records_ten_seconds_a_page(tmp_path)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await _cancel_after_two_pages(supervisor, db)
        status = await supervisor.status("a")
        assert status["full_sync_next"]["action"] == "resume"
        assert "unchanged" in status["full_sync_next"]["reason"]
        w.source.pages_read.clear()
        started = await supervisor.full_sync("a")
        assert started["resumed"] is True
        await trio.sleep(100)
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "completed" and fs["done"] == 50
        assert (await supervisor.status("a"))["full_sync_next"]["action"] == "start"  # completed: next is new
        nursery.cancel_scope.cancel()
    assert w.source.pages_read == [20, 30, 40]  # from the checkpoint, not from zero
    assert sorted(w.dest.records) == sorted(f"r{i}" for i in range(50))


async def test_full_sync_from_start_starts_over_after_a_cancel(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config, w = _fifty_records_ten_seconds_a_page(tmp_path)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await _cancel_after_two_pages(supervisor, db)
        w.source.pages_read.clear()
        started = await supervisor.full_sync("a", from_start=True)
        assert started["resumed"] is False and "from-start" in started["reason"]
        await trio.sleep(100)
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "completed" and fs["done"] == 50
        nursery.cancel_scope.cancel()
    assert w.source.pages_read == [0, 10, 20, 30, 40]


async def test_full_sync_after_cancel_starts_over_when_the_mappings_changed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config, w = _fifty_records_ten_seconds_a_page(tmp_path)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await _cancel_after_two_pages(supervisor, db)
        await supervisor.reload(fake_config(tmp_path, {"a": {"records": 50, "page_size": 25}}))
        nxt = (await supervisor.status("a"))["full_sync_next"]
        assert nxt["action"] == "start" and "mappings changed" in nxt["reason"]
        w.source.pages_read.clear()
        started = await supervisor.full_sync("a")
        assert started["resumed"] is False
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert w.source.pages_read == [0, 25]
