"""Proof of the machinery with the fake kind: timers over a simulated week, full sync checkpoint / cancel /
resume, webhooks deferred during a full sync, isolation between integrations, and restarts."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import trio

from crmsync.clock import WallClock
from crmsync.daemon.supervisor import CommandError, Supervisor
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config, start_supervisor
from tests.fake_kind import world

NY = ZoneInfo("America/New_York")


async def test_timers_fire_at_wall_clock_times_across_a_week_with_dst(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"schedules": {"tick": {"every": "30m", "between": ["08:00", "10:00"]}}}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await trio.sleep(7 * 24 * 3600)
        nursery.cancel_scope.cancel()
    runs = world("a").flow_runs
    nightly = [datetime.fromisoformat(t).astimezone(NY) for f, t in runs if f == "nightly"]
    ticks = [datetime.fromisoformat(t).astimezone(NY) for f, t in runs if f == "tick"]
    # one nightly run per night, at 02:00 local, on both sides of the fall-back change (Nov 1)
    assert [d.date().isoformat() for d in nightly] == [
        "2026-10-29", "2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert {(d.hour, d.minute) for d in nightly} == {(2, 0)}
    # the UTC offset changed, so the local time is kept, not the UTC time
    assert {d.utcoffset() for d in nightly} == {timedelta(hours=-4), timedelta(hours=-5)}
    # ticks: 08:00, 08:30, 09:00, 09:30 each day (10:00 is the exclusive end), never at night
    per_day = Counter(d.date() for d in ticks)
    assert set(per_day.values()) == {4}
    assert {(d.hour, d.minute) for d in ticks} == {(8, 0), (8, 30), (9, 0), (9, 30)}
    assert len(per_day) == 7


async def test_full_sync_checkpoints_cancels_and_resumes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"records": 50, "page_size": 10}})
    w = world("a")
    w.source.page_delay = 10.0
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.full_sync("a")
        await trio.sleep(25)  # two pages done, the third in progress
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "running" and fs["position"] == "20" and fs["done"] == 20
        status = await supervisor.status("a")
        assert status["full_sync"]["state"] == "running" and status["full_sync"]["done"] == 20
        result = await supervisor.cancel("a")
        assert result["cancelled"][0]["flow"] == "full_sync"
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "cancelled" and fs["done"] == 20
        run = (await db.tx(q.list_runs, "a", 1, "full_sync"))[0]
        assert run["status"] == "cancelled"
        # started over on request (--from-start), it completes
        await supervisor.full_sync("a", from_start=True)
        await trio.sleep(100)
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "completed" and fs["done"] == 50
        nursery.cancel_scope.cancel()
    assert sorted(w.dest.records) == sorted(f"r{i}" for i in range(50))


async def test_full_sync_resumes_after_a_crash_from_its_checkpoint(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"records": 50, "page_size": 10}})
    w = world("a")
    w.source.page_delay = 10.0
    db = await Database.open(tmp_path / "crash.db", inline=True)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.full_sync("a")
        await trio.sleep(35)  # three pages acknowledged
        nursery.cancel_scope.cancel()  # the process dies: no graceful anything
    await db.aclose()
    fs = Database.open_sync(tmp_path / "crash.db").tx_sync(q.get_full_sync, "a")
    assert fs is not None and fs["state"] == "running" and fs["position"] == "30"

    w.source.pages_read.clear()
    db = await Database.open(tmp_path / "crash.db", inline=True)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)  # restart: active, sync resumes
        assert "a" in supervisor.runtimes
        await trio.sleep(100)
        fs = await db.tx(q.get_full_sync, "a")
        assert fs is not None and fs["state"] == "completed" and fs["done"] == 50
        nursery.cancel_scope.cancel()
    await db.aclose()
    assert w.source.pages_read == [30, 40]  # resumed from the checkpoint, not from zero
    assert sorted(w.dest.records) == sorted(f"r{i}" for i in range(50))


async def test_webhooks_during_a_full_sync_wait_then_drain_in_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"records": 30, "page_size": 10}})
    w = world("a")
    w.source.page_delay = 10.0
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.full_sync("a")
        await trio.sleep(5)
        for version, rid in [(2, "r25"), (3, "r25"), (2, "r1")]:
            await supervisor.accept_webhook("a", {}, json.dumps([{"id": rid, "version": version}]).encode())
        # a replay of an accepted event is not queued twice
        replay = await supervisor.accept_webhook("a", {}, json.dumps([{"id": "r1", "version": 2}]).encode())
        assert replay.accepted == 0
        await trio.sleep(1)
        assert [entry for entry in w.dest.log if entry[0] == "realtime"] == []  # held back
        assert await db.tx(q.queue_depth, "a") == 3
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    vias = [via for via, _, _ in w.dest.log]
    assert vias == ["full_sync"] * 30 + ["realtime"] * 3
    assert [(rid, v) for via, rid, v in w.dest.log if via == "realtime"] == [("r25", 2), ("r25", 3), ("r1", 2)]
    assert w.dest.records["r25"]["version"] == 3  # the newer change won


async def test_deactivating_one_integration_leaves_the_other_running(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}, "b": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.activate("b")
        await trio.sleep(24 * 3600)
        before_a, before_b = len(world("a").flow_runs), len(world("b").flow_runs)
        assert before_a > 0 and before_b > 0
        await supervisor.deactivate("a")
        assert "a" not in supervisor.runtimes and "b" in supervisor.runtimes
        await trio.sleep(24 * 3600)
        assert len(world("a").flow_runs) == before_a
        assert len(world("b").flow_runs) > before_b
        status = await supervisor.status()
        assert {i["name"]: i["active"] for i in status["integrations"]} == {"a": False, "b": True}
        nursery.cancel_scope.cancel()


async def test_a_restart_brings_active_integrations_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}, "b": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("b")
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        assert sorted(supervisor.runtimes) == ["b"]
        nursery.cancel_scope.cancel()


async def test_commands_refuse_clearly(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {"records": 5}})
    async with trio.open_nursery() as nursery:
        supervisor: Supervisor = await start_supervisor(nursery, config, db, sim_clock)
        for coro, code in [
            (supervisor.activate("nope"), "unknown_integration"),
            (supervisor.full_sync("a"), "not_active"),
            (supervisor.run_flow("a", "bogus"), "unknown_flow"),
            (supervisor.report("a"), "no_runs"),
        ]:
            try:
                await coro
            except CommandError as exc:
                assert exc.code == code
            else:
                raise AssertionError(f"expected {code}")
        await supervisor.activate("a")
        result = await supervisor.run_flow("a", "once", wait=True)
        assert result["run"]["status"] == "success"
        report = await supervisor.report("a")
        assert report["counts"]["unchanged"] == 1 and report["rows"][0]["outcome"] == "unchanged"
        nursery.cancel_scope.cancel()


async def test_reload_restarts_only_changed_integrations(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}, "b": {}, "c": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        for name in ("a", "b", "c"):
            await supervisor.activate(name)
        before = dict(supervisor.runtimes)
        new = fake_config(tmp_path, {"a": {}, "b": {"notes": "changed"}, "d": {}})
        result = await supervisor.reload(new)
        assert result["changed"] == ["b"] and result["added"] == ["d"] and result["removed"] == ["c"]
        assert supervisor.runtimes["a"] is before["a"]  # untouched
        assert supervisor.runtimes["b"] is not before["b"]  # restarted, still active
        assert "c" not in supervisor.runtimes and "d" not in supervisor.runtimes  # d was never activated
        assert before["c"].stopped.is_set() and before["b"].stopped.is_set()
        nursery.cancel_scope.cancel()


async def test_a_crashing_integration_is_isolated_and_restarted(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"broken": {"fail_open": 2}, "fine": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("fine")
        await supervisor.activate("broken")  # returns: the crash is contained
        status = await supervisor.status("broken")
        assert status["active"] is True and status["running"] is False
        assert "client construction failed" in status["error"]
        await trio.sleep(3 * 3600)  # backoff 5 s, 10 s: the third attempt works; "fine" passes 02:00
        status = await supervisor.status("broken")
        assert status["running"] is True and status["error"] is None
        assert world("broken").open_attempts == 3
        assert world("fine").flow_runs  # the other integration ran all along
        nursery.cancel_scope.cancel()


async def test_a_poison_event_is_set_aside_and_an_outage_never_is(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}})
    w = world("a")
    w.flaky_failures = 40  # far more than the dead-letter limit: an outage of many minutes
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        body = json.dumps([{"id": "r1", "version": 1}, {"id": "poison1", "version": 1},
                           {"id": "r2", "version": 1}, {"id": "flaky1", "version": 1},
                           {"id": "r3", "version": 1}]).encode()
        assert (await supervisor.accept_webhook("a", {}, body)).accepted == 5
        await trio.sleep(6 * 3600)
        status = await supervisor.status("a")
        nursery.cancel_scope.cancel()
    # the queue moved on past the poison event, in arrival order; the outage's event was never dropped
    assert [rid for via, rid, _ in w.dest.log if via == "realtime"] == ["r1", "r2", "flaky1", "r3"]
    assert status["dead_letters"] == 1 and status["queue_depth"] == 0
    assert w.flaky_failures == 0
