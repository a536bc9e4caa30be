"""Issue 11, item 2 for efficy_apsis: ``full-sync NAME --dry-run`` and a dry consent backflow make no write
call to APSIS or Efficy and change no link, checkpoint or fingerprint; the real runs then do what they said."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL
from crmsync.daemon.control import ControlServer
from crmsync.daemon.dry_run import run_dry
from crmsync.daemon.render import render_report
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, NEWS, world

STATE_TABLES = ("links", "cursors", "fingerprints", "kv", "consent_history", "full_syncs")


def _state(c: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {t: [tuple(r) for r in c.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in STATE_TABLES}


def _rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["crm_id"], r["outcome"], r["reason"]) for r in report["rows"]]


async def test_dry_full_sync_and_backflow_write_nothing_and_match_the_real_runs(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=14) as w:
        links_before = {c["K_CONTACT"]: list(c["profile_ids"]) for c in w.efficy.contacts()}
        before = await w.db.tx(_state)
        dry = await run_dry(w.supervisor, NAME, "full_sync")
        assert w.apsis.write_calls == 0 and w.apsis.profiles() == []
        assert await w.db.tx(_state) == before
        assert dry["run"]["status"] == "success" and dry["run"]["trigger"] == "dry_run"
        assert dry["counts"]["created"] > 0 and dry["counts"]["skipped"]
        assert dry["intended_writes_total"] >= dry["counts"]["created"]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        real = await w.supervisor.report(NAME, (await w.last_run("full_sync"))["id"], limit=100000)
        assert real["counts"] == dry["counts"]  # the tags step saw the profiles the dry sync would link
        assert _rows(real) == _rows(dry)

        await trio.sleep(60)
        w.apsis.opt_out("10001", NEWS.topic, CHANNEL_EMAIL)  # the unsubscribe link
        writes = w.apsis.write_calls
        before = await w.db.tx(_state)
        dry_back = await run_dry(w.supervisor, NAME, "consent_backflow")
        assert w.apsis.write_calls == writes
        assert {c["K_CONTACT"]: list(c["profile_ids"]) for c in w.efficy.contacts()}[10001] == links_before[10001]
        assert await w.db.tx(_state) == before
        assert [(r["crm_id"], r["outcome"]) for r in dry_back["rows"]] == [("10001", "updated")]
        assert [wr["call"] for wr in dry_back["intended_writes"]] == ["unlink_profile"]
        real_back = await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        rows = await w.rows(real_back["run_id"])
        assert [(r["crm_id"], r["outcome"]) for r in rows] == [("10001", "updated")]


async def test_full_sync_dry_run_over_the_control_protocol(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=8) as w:
        server = ControlServer(w.supervisor, 300, _no_reload)
        reply = await server.dispatch_line(json.dumps(
            {"id": 1, "cmd": "full_sync", "args": {"integration": NAME, "dry_run": True}}).encode())
        assert reply["ok"], reply
        result = reply["result"]
        assert result["dry_run"] is True and result["run"]["trigger"] == "dry_run"
        assert result["counts"]["created"] > 0 and w.apsis.write_calls == 0
        assert await w.db.tx(q.get_full_sync, NAME) is None  # no checkpoint either
        status = await w.supervisor.status(NAME)
        assert status["flows"]["full_sync"]["last_run"] is None  # a dry run is not the flow's last run
        assert "DRY RUN" in render_report(await w.supervisor.report(NAME, result["run_id"]))


async def _no_reload() -> dict[str, Any]:
    return {}
