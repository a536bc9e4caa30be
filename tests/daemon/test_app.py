"""The Daemon in-process on loopback: separate metrics listener, graceful stop mid full sync."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from crmsync.daemon.app import Daemon
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config
from tests.fake_kind import world


async def test_metrics_on_a_separate_listener(tmp_path: Path) -> None:
    config = fake_config(tmp_path, {"a": {}})
    config = config.model_copy(update={"http": config.http.model_copy(update={"metrics_listen": "127.0.0.1:0"})})
    daemon = Daemon(config, handle_signals=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert daemon.webhook_url != daemon.metrics_url
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{daemon.metrics_url}/metrics")).status_code == 200
            assert (await http.get(f"{daemon.metrics_url}/healthz")).status_code == 200
            assert (await http.get(f"{daemon.webhook_url}/metrics")).status_code == 404  # internal only
            assert (await http.post(f"{daemon.metrics_url}/webhooks/a", content=b"[]")).status_code == 404
        daemon.stop()
    assert daemon.stopped.is_set()


async def test_graceful_stop_leaves_a_resumable_full_sync(tmp_path: Path) -> None:
    config = fake_config(tmp_path, {"a": {"records": 100, "page_size": 10}}, shutdown_timeout="10s")
    world("a").source.page_delay = 0.05
    daemon = Daemon(config, handle_signals=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert daemon.supervisor is not None
        await daemon.supervisor.activate("a")
        await daemon.supervisor.full_sync("a")
        await trio.sleep(0.2)
        with trio.fail_after(10):
            daemon.stop()
            await daemon.stopped.wait()
    db = await Database.open(config.daemon.database_path)
    fs = await db.tx(q.get_full_sync, "a")
    run = (await db.tx(q.list_runs, "a", 1, "full_sync"))[0]
    await db.aclose()
    assert fs is not None and fs["state"] == "running"  # resumes on the next start
    assert 0 < fs["done"] < 100 and fs["position"] == str(fs["done"])  # the last acknowledged page
    assert run["status"] == "cancelled" and run["finished_at"] is not None
    written = len(world("a").dest.records)
    assert written == fs["done"]  # nothing acknowledged beyond the checkpoint


async def test_a_started_daemon_process_freezes_its_start_up_objects_and_widens_the_young_generation(
        tmp_path: Path) -> None:
    # `crmsync run` (settle_gc=True): start-up objects leave the collector's view, so full collections under
    # webhook load no longer re-examine them (bench/webhooks.py --trace measured 60-100 ms pauses before)
    import gc

    from crmsync.daemon.heap import GC_OLDER_THRESHOLDS, GC_YOUNG_THRESHOLD

    before = gc.get_threshold()
    daemon = Daemon(fake_config(tmp_path, {"a": {}}), handle_signals=False, settle_gc=True)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
            daemon.stop()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_daemon_sharing_its_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    import gc

    before = gc.get_threshold()
    daemon = Daemon(fake_config(tmp_path, {"a": {}}), handle_signals=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
        daemon.stop()
