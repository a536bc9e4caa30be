"""Issue 11, item 2: a dry run reads both systems as a real run would and reports what it would do, without
any write call, link, cursor or fingerprint change; the next real run does what the dry run reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio
import trio.testing

from crmsync.daemon.dry_run import run_dry
from crmsync.daemon.integrations.everyaction_mobilecommons.sandbox import seed
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world

STATE_TABLES = ("links", "cursors", "fingerprints", "kv", "consent_history", "full_syncs")


def _state(c: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {t: [tuple(r) for r in c.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in STATE_TABLES}


def _rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(((r["crm_id"] or "") if r["outcome"] != "created" else "", r["outcome"], r["reason"] or "")
                  for r in report["rows"])


async def test_dry_runs_write_nothing_and_match_the_next_real_runs(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    seed(world.ea, world.mc, 40)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        await trio.sleep(1)
        for flow in ("ea_to_mc", "mc_to_ea"):
            before = await world.db.tx(_state)
            welcomes = len(world.mc.welcome_messages)
            dry = await run_dry(sup, NAME, flow)
            assert world.write_calls() == [], flow  # not one write call reached either simulator
            assert await world.db.tx(_state) == before  # no link, cursor, fingerprint or history change
            assert len(world.mc.welcome_messages) == welcomes
            assert dry["dry_run"] is True and dry["run"]["trigger"] == "dry_run"
            assert dry["run"]["status"] == "success", dry["run"]
            assert dry["intended_writes_total"] > 0 and dry["counts"]["fetched"] > 0
            # the status of the flow shows real runs only
            assert (await sup.status(NAME))["flows"][flow]["last_run"] is None or \
                (await sup.status(NAME))["flows"][flow]["last_run"]["id"] != dry["run_id"]
            real = await world.run(flow)
            assert real["counts"] == dry["counts"], flow
            assert _rows(real) == _rows(dry), flow
            assert world.calls is not None
            world.calls.clear()  # the real run wrote; the next dry run starts counting from zero
        nursery.cancel_scope.cancel()


async def test_a_dry_run_works_on_an_inactive_integration_and_refuses_unknown_flows(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    seed(world.ea, world.mc, 16)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await trio.sleep(1)
        dry = await run_dry(sup, NAME, "ea_to_mc")  # never activated
        assert dry["counts"]["created"] > 0 and world.write_calls() == []
        assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is None
        try:
            await run_dry(sup, NAME, "nope")
        except Exception as exc:
            assert getattr(exc, "code", None) == "unknown_flow"
        else:
            raise AssertionError("an unknown flow must be refused")
        nursery.cancel_scope.cancel()
