"""Issue 10, items 1 and 2: the series alerts need exist from the start, what the store knows survives a
restart, and the metrics a monitoring team needs are there (with no ``_created`` noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from crmsync.connectors.http import ApiClient, RetryPolicy
from crmsync.daemon.http import HttpApp
from crmsync.daemon.metrics import Metrics
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config, start_supervisor


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


async def scrape(supervisor: Any) -> str:
    app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        return (await http.get("/metrics")).text


async def test_alert_series_exist_at_zero_from_the_start(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    """`increase(crmsync_runs_total{status="failed"}[1h]) > 0` needs the series at 0 before the first failure."""
    config = fake_config(tmp_path, {"a": {}, "b": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        text = await scrape(supervisor)
        nursery.cancel_scope.cancel()
    for integration in ("a", "b"):
        for flow in ("nightly", "tick", "once", "full_sync", "realtime"):
            for status in ("success", "partial", "failed", "cancelled"):
                assert value(text, "crmsync_runs_total", integration=integration, flow=flow, status=status) == 0
            assert value(text, "crmsync_consecutive_failed_runs", integration=integration, flow=flow) == 0
        for name in ("crmsync_realtime_queue_depth", "crmsync_realtime_queue_oldest_age_seconds",
                     "crmsync_realtime_dead_letters", "crmsync_full_sync_required", "crmsync_full_sync_running"):
            assert value(text, name, integration=integration) == 0, name
        assert value(text, "crmsync_integration_state", integration=integration, state="inactive") == 1
        assert value(text, "crmsync_integration_state", integration=integration, state="active") == 0


async def test_no_created_series_and_standard_families(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    config = fake_config(tmp_path, {"a": {}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        await supervisor.run_flow("a", "once", wait=True)
        text = await scrape(supervisor)
        nursery.cancel_scope.cancel()
    assert "_created" not in text
    names = {s[0] for s in samples(text)}
    assert "process_resident_memory_bytes" in names and "process_start_time_seconds" in names
    build = [k for k in samples(text) if k[0] == "crmsync_build_info"]
    assert build and dict(build[0][1])["version"]
    assert value(text, "crmsync_runs_total", integration="a", flow="once", status="success") == 1
    assert value(text, "crmsync_integration_state", integration="a", state="active") == 1


async def test_last_success_and_failure_streak_restored_from_the_store(tmp_path: Path, db: Any,
                                                                       sim_clock: Any) -> None:
    """After a restart, a flow that keeps failing still has its last success, so "stale" alerts can fire."""
    config = fake_config(tmp_path, {"a": {}}, report_retention_runs=2)
    ok_at = "2026-10-28T06:00:00+00:00"

    def history(c: Any) -> None:
        run = q.start_run(c, "a", "nightly", "schedule", "2026-10-28T05:59:00+00:00")
        q.finish_run(c, run, "success", {}, None, ok_at)
        q.record_last_success(c, "a", "nightly", ok_at)
        for day in (29, 30, 31):
            run = q.start_run(c, "a", "nightly", "schedule", f"2026-10-{day}T06:00:00+00:00")
            q.finish_run(c, run, "failed", {}, "boom", f"2026-10-{day}T06:01:00+00:00")
        # retention pruned the successful run itself: the kv entry keeps its time
        q.prune(c, "a", "nightly", "2026-10-30T00:00:00+00:00", 2)

    await db.tx(history)
    assert await db.tx(q.last_run, "a", "nightly", "success") is None  # pruned
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        text = await scrape(supervisor)
        nursery.cancel_scope.cancel()
    from datetime import datetime

    assert value(text, "crmsync_last_success_timestamp_seconds", integration="a", flow="nightly") == \
        datetime.fromisoformat(ok_at).timestamp()
    assert value(text, "crmsync_consecutive_failed_runs", integration="a", flow="nightly") == 2  # two kept
    # a flow that never succeeded has no series (the "never succeeded" alert looks for its absence)
    assert value(text, "crmsync_last_success_timestamp_seconds", integration="a", flow="tick") is None


async def test_store_gauges_dead_letters_queue_age_full_sync_required(tmp_path: Path, db: Any,
                                                                      sim_clock: Any) -> None:
    config = fake_config(tmp_path, {"a": {}})

    def setup(c: Any) -> None:
        q.enqueue(c, "a", [("k1", {"id": "x"}), ("k2", {"id": "y"}), ("k3", {"id": "z"})],
                  "2026-10-29T03:00:00+00:00")  # an hour before the clock's now
        first = q.peek_pending(c, "a", 1)[0]
        q.dead_letter(c, "a", first.seq, "bad")
        q.set_active(c, "a", "fake", False, "2026-10-29T03:00:00+00:00")
        q.set_full_sync_required(c, "a", True, "config changed")

    await db.tx(setup)
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        supervisor.metrics.now = lambda: sim_clock.now().timestamp()
        text = await scrape(supervisor)
        nursery.cancel_scope.cancel()
    assert value(text, "crmsync_realtime_dead_letters", integration="a") == 1  # a gauge of what is stored
    assert value(text, "crmsync_realtime_queue_depth", integration="a") == 2
    age = value(text, "crmsync_realtime_queue_oldest_age_seconds", integration="a")
    assert age is not None and 3600 <= age < 3660
    assert value(text, "crmsync_full_sync_required", integration="a") == 1


async def test_integration_state_error_while_crashed(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    config = fake_config(tmp_path, {"a": {"fail_open": 100}})
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)
        await supervisor.activate("a")
        text = await scrape(supervisor)
        nursery.cancel_scope.cancel()
    assert value(text, "crmsync_integration_state", integration="a", state="error") == 1
    assert value(text, "crmsync_integration_state", integration="a", state="active") == 0


async def test_api_latency_histogram_and_retries_by_reason() -> None:
    answers = iter([httpx.Response(503), httpx.Response(429, headers={"retry-after": "0"}),
                    httpx.Response(200, json={})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    metrics = Metrics()

    class Client(ApiClient):
        system = "demo"

    async with Client("http://api.test", transport=httpx.MockTransport(handler), observer=metrics,
                      retry=RetryPolicy(attempts=5, base_delay=0, max_delay=0)) as client:
        await client.request("GET", "/x")
    text = metrics.render().decode()
    assert value(text, "crmsync_api_retries_total", system="demo", reason="server_error") == 1
    assert value(text, "crmsync_api_retries_total", system="demo", reason="rate_limited") == 1
    assert value(text, "crmsync_api_request_duration_seconds_count", system="demo") == 3


async def test_metrics_queue_summary_reads_partial_indexes_not_tombstones(tmp_path: Path) -> None:
    """/metrics reads the queue at every scrape: its three lookups must not scan processed tombstones."""
    db = await Database.open(tmp_path / "s.db")
    try:
        def plans(c: Any) -> list[str]:
            out = []
            for sql in ("SELECT COUNT(*) FROM realtime_queue WHERE integration = 'a' AND attempts >= 0",
                        "SELECT received_at FROM realtime_queue WHERE integration = 'a' AND attempts >= 0 "
                        "ORDER BY seq LIMIT 1",
                        "SELECT COUNT(*) FROM realtime_queue WHERE integration = 'a' AND attempts = -2"):
                out.append(" ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql)))
            return out

        for plan in await db.tx(plans):
            assert "realtime_queue_pending" in plan or "realtime_queue_dead_letters" in plan, plan

        def fill(c: Any) -> tuple[int, str | None, int]:
            q.enqueue(c, "a", [(f"k{i}", {"i": i}) for i in range(5)], "2026-10-29T00:00:00+00:00")
            first, second, *_ = q.peek_pending(c, "a", 5)
            q.ack_queue(c, "a", [first.seq])
            q.dead_letter(c, "a", second.seq, "bad")
            return q.queue_summary(c, "a")

        assert await db.tx(fill) == (3, "2026-10-29T00:00:00+00:00", 1)
    finally:
        await db.aclose()
