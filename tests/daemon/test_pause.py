"""Issue 11, item 5: pause/resume next to activate/deactivate. Pausing holds timers and the real-time queue
(webhooks are still accepted and kept); resume drains them in order; the state survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.daemon.supervisor import CommandError
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config, start_supervisor
from tests.fake_kind import world


def _hook(rid: str, version: int) -> bytes:
    return json.dumps([{"id": rid, "version": version}]).encode()


async def test_pause_holds_timers_and_queue_keeps_webhooks_and_resume_drains_in_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}})
    w = world("a")
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        paused = await supervisor.pause("a")
        assert paused["paused"] is True and paused["changed"] is True
        assert (await supervisor.pause("a"))["changed"] is False
        runs_before = len(w.flow_runs)
        for version, rid in [(1, "r2"), (1, "r1"), (2, "r2")]:
            assert (await supervisor.accept_webhook("a", {}, _hook(rid, version))).accepted == 1  # still accepted
        await trio.sleep(2 * 24 * 3600)  # two days: nightly and five-minute slots fall due
        assert len(w.flow_runs) == runs_before  # timers held
        assert w.dest.log == []  # queue held ...
        assert await db.tx(q.queue_depth, "a") == 3  # ... and kept
        status = await supervisor.status("a")
        assert status["paused"] is True and status["active"] is True and status["paused_since"]
        assert b'crmsync_integration_paused{integration="a"} 1.0' in supervisor.metrics.render()
        with pytest.raises(CommandError) as refused:
            await supervisor.run_flow("a", "once")
        assert refused.value.code == "paused"
        with pytest.raises(CommandError):
            await supervisor.full_sync("a")
        resumed = await supervisor.resume("a")
        assert resumed["paused"] is False and resumed["changed"] is True
        await trio.sleep(60)
        assert [(rid, v) for via, rid, v in w.dest.log if via == "realtime"] == [("r2", 1), ("r1", 1), ("r2", 2)]
        assert len(w.flow_runs) > runs_before  # the held slots fired on resume
        assert (await supervisor.status("a"))["paused"] is False
        assert b'crmsync_integration_paused{integration="a"} 0.0' in supervisor.metrics.render()
        nursery.cancel_scope.cancel()


async def test_paused_state_survives_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}})
    w = world("a")
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.pause("a")
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.accept_webhook("a", {}, _hook("r9", 1))
        await trio.sleep(24 * 3600)
        assert w.flow_runs == [] and w.dest.log == []
        assert (await supervisor.status("a"))["paused"] is True
        await supervisor.resume("a")
        await trio.sleep(10)
        assert [rid for _, rid, _ in w.dest.log] == ["r9"]
        nursery.cancel_scope.cancel()


async def test_pause_stops_a_full_sync_at_a_page_boundary_and_resume_continues(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"records": 30, "page_size": 10}})
    w = world("a")
    w.source.page_delay = 10.0
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.full_sync("a")
        await trio.sleep(15)  # inside the second page
        await supervisor.pause("a")
        await trio.sleep(3600)
        assert len(w.dest.log) == 20  # the page in flight finished; no further page
        await supervisor.resume("a")
        await trio.sleep(60)
        assert len(w.dest.log) == 30 and (await db.tx(q.get_full_sync, "a"))["state"] == "completed"
        nursery.cancel_scope.cancel()
